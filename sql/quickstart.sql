-- The tour of `make demo` (doc/quickstart.sql), run as a test so that the
-- demo keeps working.  Terse errors: the tour's DETAILs carry random ids.
\set VERBOSITY terse
\i doc/quickstart.sql
