-- tenancy quickstart: run by `make demo` against a throwaway cluster.
\set ON_ERROR_STOP 0
\echo '== 1. Install (tenancy is in shared_preload_libraries)'
CREATE EXTENSION IF NOT EXISTS tenancy CASCADE;
