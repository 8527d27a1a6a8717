"""stepq's worker processes: arq workers that advance runs, and the ``stepq`` command."""
