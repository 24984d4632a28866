"""Which models are served: the model directories, their versions and engines, and how they follow
the models directory while the server runs. One control plane per server, whatever the number of
HTTP front ends."""
