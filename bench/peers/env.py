"""Names of the environment variables the orchestrator hands to workers and drivers (stdlib only:
imported in stepq's venv and in the peers' venv alike)."""

#: The marks database the workflows record their runs into.
MARKS_ENV = "STEPQ_PEERS_MARKS_URL"
#: The DBOS system database of the block.
DB_ENV = "STEPQ_PEERS_DBOS_URL"
#: The Restate ingress (``http://127.0.0.1:PORT``).
INGRESS_ENV = "STEPQ_PEERS_RESTATE_INGRESS"
