# tenancy: tenant isolation, quotas, rate limits, API keys and usage metering
#
#   make demo   install what is missing, build, install, run doc/quickstart.sql
#               against a throwaway cluster
#   make test   the same set-up, then every test against throwaway clusters
#
# Both run test/harness; see README.md.  Plain PGXS targets (all, install,
# installcheck) work as usual once PostgreSQL's server headers are there.

EXTENSION  = tenancy
MODULE_big = tenancy
OBJS = \
	src/tenancy.o \
	src/guc.o \
	src/context.o \
	src/tenant.o \
	src/protect.o \
	src/apikey.o
DATA = sql/tenancy--0.1.sql
DOCS = doc/tenancy.md
PGFILEDESC = "tenancy - tenant isolation for PostgreSQL"

PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers

# pg_regress looks for ./sql/NAME.sql first: list tests by name, never by
# wildcard, and never name one like an install script.
REGRESS = preload tenants context protect
REGRESS_OPTS = --temp-instance=./tmp_check --temp-config=test/tenancy.conf \
	--load-extension=pgcrypto --load-extension=tenancy
ISOLATION =
ISOLATION_OPTS = --inputdir=test/isolation --outputdir=output_iso \
	--temp-instance=./tmp_check_iso --temp-config=test/tenancy.conf \
	--load-extension=pgcrypto --load-extension=tenancy
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

# The spec areas built so far, for ../shared/tools/spec-check --only.
SPEC_AREAS = tenant|protect|guc app|guc tenancy\.(default_tenant|auto_protect)

PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
$(OBJS): $(wildcard src/*.h)
endif

.PHONY: deps demo test lint bench
deps:
	test/harness deps

demo:
	test/harness demo

test:
	SPEC_AREAS='$(SPEC_AREAS)' test/harness test

lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,style,portability,performance \
		--std=c99 --suppress=missingIncludeSystem --suppress=missingInclude \
		--suppress=unusedFunction --inline-suppr -I src src/*.c

bench:
	test/bench/run
