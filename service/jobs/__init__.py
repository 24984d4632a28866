"""Training as a service: uploaded texts, fine-tuning jobs run by `charlm train` in a child process,
their events and checkpoints, all kept in SQLite under CHARLM_DATA_DIR."""
