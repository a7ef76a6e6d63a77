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
# Each area keeps its own lists, so that work on one does not touch another's.
# -- foundation: tenants and protected tables
OBJS_CORE = src/tenancy.o src/protect.o src/commit.o src/refs.o
REGRESS_CORE = preload tenants protect
ISOLATION_CORE = protect_concurrent protect_restore_race tenant_purge tenant_refs
DOCS_CORE = doc/tenancy.md doc/tenancy-concepts.md doc/tenancy-tenants.md

# -- foundation: the tenant context
OBJS_CONTEXT = src/guc.o src/context.o src/tenant.o
REGRESS_CONTEXT = context
ISOLATION_CONTEXT = context-status
DOCS_CONTEXT = doc/tenancy-context.md

# -- quotas and rate limits
OBJS_QUOTA = src/shmem.o src/quota.o src/quota_count.o src/ratelimit.o
REGRESS_QUOTA = quota ratelimit
ISOLATION_QUOTA = quota_consume quota_in_flight quota_rows quota_deferred quota_rename
DOCS_QUOTA = doc/tenancy-quotas.md

# -- API keys
OBJS_APIKEY = src/apikey.o src/keyperm.o
REGRESS_APIKEY = apikeys
ISOLATION_APIKEY = apikey_binding apikey_quota_lock apikey_last_used
DOCS_APIKEY = doc/tenancy-apikeys.md

# -- usage metering, audit, stats
OBJS_USAGE = src/usage.o
REGRESS_USAGE = usage audit
ISOLATION_USAGE = usage_rollup usage_deferred
DOCS_USAGE = doc/tenancy-usage.md

OBJS = $(OBJS_CORE) $(OBJS_CONTEXT) $(OBJS_QUOTA) $(OBJS_APIKEY) $(OBJS_USAGE)
DATA = sql/tenancy--0.1.sql
DOCS = $(DOCS_CORE) $(DOCS_CONTEXT) $(DOCS_QUOTA) $(DOCS_APIKEY) $(DOCS_USAGE)
PGFILEDESC = "tenancy - tenant isolation for PostgreSQL"

PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers

# pg_regress looks for ./sql/NAME.sql first: list tests by name, never by
# wildcard, and never name one like an install script.
REGRESS := $(strip $(REGRESS_CORE) $(REGRESS_CONTEXT) $(REGRESS_QUOTA) $(REGRESS_APIKEY) $(REGRESS_USAGE) quickstart)
REGRESS_OPTS = --temp-instance=./tmp_check --temp-config=test/tenancy.conf \
	--load-extension=pgcrypto --load-extension=tenancy
ISOLATION := $(strip $(ISOLATION_CORE) $(ISOLATION_CONTEXT) $(ISOLATION_QUOTA) $(ISOLATION_APIKEY) $(ISOLATION_USAGE))
ISOLATION_OPTS = --inputdir=test/isolation --outputdir=output_iso \
	--temp-instance=./tmp_check_iso --temp-config=test/tenancy.conf \
	--load-extension=pgcrypto --load-extension=tenancy
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

# The spec areas built so far, for ../shared/tools/spec-check --only
# (regular expressions over ../shared/tools/spec-surface.txt, without spaces).
SPEC_CORE = tenancy\.(create_tenant|tenant_id|update_tenant|suspend_tenant|activate_tenant|delete_tenant|purge_tenant|tenant_status|set_tenant|current_tenant_id|current_tenant|protect|unprotect)\(|relation.tenancy\.(tenants|plans|protected_tables|audit_log)$$|^guc
SPEC_CONTEXT = tenancy\.(tenant_id|tenant_status|set_tenant|current_tenant_id|current_tenant)\(|^guc.(app\.tenant_id|tenancy\.default_tenant)$$
SPEC_QUOTA = tenancy\.(set_plan_quota|set_tenant_quota|clear_tenant_quota|check_quota|consume_quota|release_quota|quota_usage|set_plan_rate_limit|set_tenant_rate_limit|check_rate|enforce_rate|rate_status)\(|relation.tenancy\.(plan_quotas|tenant_quotas)$$|type.tenancy\.quota_check$$|guc.tenancy\.soft_limit_ratio$$
SPEC_APIKEY = tenancy\.(create_api_key|verify_api_key|authenticate|logout|revoke_api_key|rotate_api_key)\(|relation.tenancy\.api_keys$$
SPEC_USAGE = tenancy\.(record_usage|rollup_usage|usage|run_maintenance|schedule_maintenance|unschedule_maintenance)\(|relation.tenancy\.(usage_rollups|stats)$$
space := $(subst ,, )
SPEC_AREAS = $(subst $(space),|,$(strip $(SPEC_CORE) $(SPEC_CONTEXT) $(SPEC_QUOTA) $(SPEC_APIKEY) $(SPEC_USAGE)))

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
