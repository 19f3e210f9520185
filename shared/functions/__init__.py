"""The Functions blueprints (HTTP API, status page, sweep timer and queue, sample job) and the
problem documents they answer with: parse input, call the application layer, shape output."""
