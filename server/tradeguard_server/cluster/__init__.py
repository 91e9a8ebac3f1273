"""Many sidecars sharing one PostgreSQL database (issue 17): shared control state and one owner per trader."""
