"""What runs in an HTTP front end: the FastAPI app, its routes and schemas, the playground, and the
client side of each engine (`engine_client`), the only code here that knows an engine may live in
another process."""
