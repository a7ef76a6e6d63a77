/*-------------------------------------------------------------------------
 *
 * quota.c
 *		Quotas: limits, shared usage counters and their reservations, and
 *		the SQL functions check_quota, consume_quota, release_quota,
 *		quota_usage and tenancy._require_quota.
 *
 * Design (doc/tenancy-quotas.md tells the why):
 *
 *	- Committed usage is durable in tenancy.quota_ledger, an append-only
 *	  table of deltas (tenant, resource, period_start, relid, delta).  A
 *	  transaction appends its net deltas at PRE_COMMIT, formed here and
 *	  inserted with the table AM and index maintenance (no SPI), so they
 *	  commit or vanish with its data.  Appending never waits on a row lock
 *	  and never fails with a serialization error, whatever the isolation
 *	  level.  A transaction that wrote nothing else leaves its net deltas
 *	  waiting in their shared entries instead (committed at once, written
 *	  to the ledger by a later commit within tenancy.quota_flush_delay, or
 *	  at the exit of the session), unless tenancy.quota_flush_delay is 0 or
 *	  tenancy.synchronous_quota_commit on; a commit that writes only
 *	  bookkeeping does not wait for its WAL flush (commit.c).
 *	- Shared memory caches, per (database, tenant, resource, period start),
 *	  the committed usage plus what transactions in flight have reserved
 *	  (positive deltas, checked against the limit) and are releasing
 *	  (negative deltas, kept from going below zero).  A reservation is
 *	  granted only while committed + reserved + amount <= limit, so the
 *	  usage committed can never pass the limit, however the transactions in
 *	  flight end.  At COMMIT the reservations become committed usage; at
 *	  ABORT (or the abort of the subtransaction that made them) they are
 *	  dropped.  Nothing waits for another transaction: the only lock held
 *	  is a spinlock, for a few instructions.
 *	- An entry is created on first use from the sum of its ledger rows,
 *	  read with a fresh snapshot; entries used by transactions in flight
 *	  are pinned and entries with deltas waiting are kept, so an entry is
 *	  never rebuilt without some of its usage, and after a restart usage
 *	  is rebuilt, lazily and exactly, from the ledger (a crash loses the
 *	  waiting deltas).
 *	- Limits are cached per backend and looked up again when the shared
 *	  limits generation (shmem.c) moves: the tables of limits and plans
 *	  carry triggers that bump it.
 *	- rows:<table> names a table: when a protected table's name changes,
 *	  its usage and limits move to the new name in the renaming
 *	  transaction (tenancy_quota_rename()).
 *
 * Locking: see shmem.c.  The hash table is guarded by TENANCY_LOCK_QUOTA,
 * each entry's counters by its spinlock.  An entry is pinned (pins > 0)
 * while a transaction in flight holds a delta on it; eviction, under the
 * exclusive lock, removes only unpinned entries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "common/int.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/lmgr.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_check_quota);
PG_FUNCTION_INFO_V1(tenancy_consume_quota);
PG_FUNCTION_INFO_V1(tenancy_release_quota);
PG_FUNCTION_INFO_V1(tenancy_quota_usage);
PG_FUNCTION_INFO_V1(tenancy_require_quota);
PG_FUNCTION_INFO_V1(tenancy_quota_canonical);
PG_FUNCTION_INFO_V1(tenancy_quota_limits_changed);
PG_FUNCTION_INFO_V1(tenancy_quota_purge);
PG_FUNCTION_INFO_V1(tenancy_quota_ledger_loaded);

/* How many counters shared memory holds before evicting unused ones. */
#define QUOTA_MAX_ENTRIES 8192

/* Periods of a limit. */
#define PERIOD_NONE		0
#define PERIOD_MINUTE	1
#define PERIOD_HOUR		2
#define PERIOD_DAY		3
#define PERIOD_MONTH	4

/* Key of a shared counter: fixed size, zero-padded. */
typedef struct QuotaKey
{
	Oid			dbid;
	pg_uuid_t	tenant;
	TimestampTz period_start;	/* DT_NOBEGIN for a running total */
	char		resource[TENANCY_RESOURCE_LEN];
} QuotaKey;

typedef struct QuotaEntry
{
	QuotaKey	key;			/* hash key: must be first */
	slock_t		mutex;			/* guards the fields below */
	int64		committed;		/* committed usage */
	int64		reserved;		/* positive deltas in flight */
	int64		releasing;		/* negative deltas in flight */
	int64		waiting;		/* committed, not yet in the ledger */
	int32		pins;			/* records of transactions in flight */
	uint64		last_used;		/* for eviction */
} QuotaEntry;

typedef struct QuotaShared
{
	uint64		evictions;		/* under the LWLock */
	pg_atomic_uint64 clock;		/* use counter, for eviction */
	pg_atomic_uint32 nwaiting;	/* entries with waiting != 0 */
	pg_atomic_uint64 waiting_since; /* a delta waits since; 0: none */
} QuotaShared;

static QuotaShared *quota_shared = NULL;
static HTAB *quota_hash = NULL;

/*
 * A delta of this transaction on one shared counter: one record per
 * (entry, relation, subtransaction).  Each record holds one pin.
 */
typedef struct Pending
{
	QuotaEntry *entry;
	Oid			relid;			/* leaf table for rows:/storage_bytes, else 0 */
	SubTransactionId subid;
	int64		pos;			/* reserved */
	int64		neg;			/* releasing */
} Pending;

static Pending *pending = NULL;
static int	npending = 0;
static int	maxpending = 0;
static uint64 pending_version = 1;	/* moves when records are removed */

/* Tenants purged by this transaction: their counters restart at commit. */
static List *purged_tenants = NIL;	/* of pg_uuid_t *, TopMemoryContext */

static bool callbacks_registered = false;
static bool bump_at_eoxact = false;
static bool ledger_loaded = false;	/* forget the counters at commit */

/*
 * Deltas waiting in shared memory (see ledger_write()).  A commit that
 * writes them takes them out of their entries, which it pins until it
 * ends; an abort puts them back.
 */
typedef struct Taken
{
	QuotaEntry *entry;
	int64		delta;
} Taken;

static Taken *taken = NULL;
static int	ntaken = 0;
static int	maxtaken = 0;

static bool defer_this_commit = false;	/* its deltas wait in shared memory */
static bool left_waiting = false;	/* this backend left deltas waiting */
static bool flush_requested = false;	/* write every waiting delta at commit */

/* GUC tenancy.quota_flush_delay (defined in guc.c), in ms */
int			tenancy_guc_quota_flush_delay = 200;

/* At most this many entries hold waiting deltas; beyond, commits write. */
#define QUOTA_MAX_WAITING (QUOTA_MAX_ENTRIES / 4)

/* Per-backend cache of limits, valid for one generation. */
typedef struct LimitKey
{
	Oid			dbid;
	pg_uuid_t	tenant;
	char		resource[TENANCY_RESOURCE_LEN];
} LimitKey;

typedef struct LimitEntry
{
	LimitKey	key;
	bool		has_limit;
	int64		limit;
	int			period;
} LimitEntry;

static HTAB *limit_cache = NULL;
static uint64 limit_cache_gen = 0;

static void quota_xact_callback(XactEvent event, void *arg);
static void taken_end(bool put_back);
static void quota_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								   SubTransactionId parentSubid, void *arg);

/* ---------- shared memory ---------- */

Size
tenancy_quota_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(QuotaShared)),
					hash_estimate_size(QUOTA_MAX_ENTRIES, sizeof(QuotaEntry)));
}

void
tenancy_quota_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	quota_shared = ShmemInitStruct("tenancy quota", sizeof(QuotaShared), &found);
	if (!found)
	{
		quota_shared->evictions = 0;
		pg_atomic_init_u64(&quota_shared->clock, 0);
		pg_atomic_init_u32(&quota_shared->nwaiting, 0);
		pg_atomic_init_u64(&quota_shared->waiting_since, 0);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(QuotaKey);
	info.entrysize = sizeof(QuotaEntry);
	quota_hash = ShmemInitHash("tenancy quota counters",
							   QUOTA_MAX_ENTRIES, QUOTA_MAX_ENTRIES,
							   &info, HASH_ELEM | HASH_BLOBS);
}

/* Register the transaction callbacks of this file, once per backend. */
static void
quota_register_callbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(quota_xact_callback, NULL);
	RegisterSubXactCallback(quota_subxact_callback, NULL);
	callbacks_registered = true;
}

/*
 * Called by _PG_init before the other areas register theirs: transaction
 * callbacks run newest first, so at PRE_COMMIT the ledger is written after
 * every other callback of tenancy has written what it writes, and
 * ledger_write() sees whether the transaction wrote anything else.
 */
void
tenancy_quota_init(void)
{
	quota_register_callbacks();
}

/* ---------- SPI as the extension's owner ---------- */

/*
 * Internal queries read and write tenancy's own tables, which tenant
 * sessions may not touch: run them as the bootstrap superuser, with a
 * security-restricted context so nothing user-defined can run as it.  An
 * error restores the user at (sub)transaction abort.
 */
typedef struct AsOwner
{
	Oid			save_user;
	int			save_sec;
} AsOwner;

static void
owner_switch(AsOwner *s)
{
	GetUserIdAndSecContext(&s->save_user, &s->save_sec);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID,
						   s->save_sec | SECURITY_LOCAL_USERID_CHANGE);
}

static void
owner_restore(AsOwner *s)
{
	SetUserIdAndSecContext(s->save_user, s->save_sec);
}

static void
as_owner_begin(AsOwner *s)
{
	owner_switch(s);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tenancy: SPI_connect failed");
}

static void
as_owner_end(AsOwner *s)
{
	SPI_finish();
	owner_restore(s);
}

/*
 * Run a read-only query with a fresh snapshot: the latest committed state,
 * whatever the isolation level, plus this transaction's own changes.
 */
static void
spi_read_latest(const char *sql, int nargs, Oid *types, Datum *values)
{
	int			rc;

	PushActiveSnapshot(GetLatestSnapshot());
	rc = SPI_execute_with_args(sql, nargs, types, values, NULL, true, 0);
	PopActiveSnapshot();
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "tenancy: internal query failed: %s", SPI_result_code_string(rc));
}

static int64
spi_int64(int row, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);

	return *isnull ? 0 : DatumGetInt64(d);
}

/* ---------- periods ---------- */

static int
period_from_text(const char *p)
{
	if (p == NULL)
		return PERIOD_NONE;
	if (strcmp(p, "minute") == 0)
		return PERIOD_MINUTE;
	if (strcmp(p, "hour") == 0)
		return PERIOD_HOUR;
	if (strcmp(p, "day") == 0)
		return PERIOD_DAY;
	if (strcmp(p, "month") == 0)
		return PERIOD_MONTH;
	return PERIOD_NONE;
}

/* The start of the UTC period containing now; DT_NOBEGIN for none. */
static TimestampTz
period_start(int period)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		unit;

	switch (period)
	{
		case PERIOD_MINUTE:
			unit = USECS_PER_MINUTE;
			break;
		case PERIOD_HOUR:
			unit = USECS_PER_HOUR;
			break;
		case PERIOD_DAY:
			unit = USECS_PER_DAY;
			break;
		case PERIOD_MONTH:
			{
				struct pg_tm tm;
				fsec_t		fsec;
				TimestampTz result;

				if (timestamp2tm(now, NULL, &tm, &fsec, NULL, NULL) != 0)
					elog(ERROR, "tenancy: timestamp out of range");
				tm.tm_mday = 1;
				tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
				if (tm2timestamp(&tm, 0, NULL, &result) != 0)
					elog(ERROR, "tenancy: timestamp out of range");
				return result;
			}
		default:
			return DT_NOBEGIN;
	}
	return now - (((now % unit) + unit) % unit);
}

/* ---------- resources ---------- */

/* Is this resource counted automatically (not consumable by hand)? */
static bool
resource_is_automatic(const char *resource)
{
	return strncmp(resource, "rows:", 5) == 0 ||
		strcmp(resource, "storage_bytes") == 0 ||
		strcmp(resource, "api_keys") == 0;
}

/*
 * The table a rows:<table> name designates, or InvalidOid: a name as
 * regclass accepts it (optionally schema- and database-qualified, quoted
 * where needed), resolved without raising for bad syntax and without the
 * schema privilege checks of a query (the name only identifies a counter).
 */
static Oid
table_of_resource_name(const char *name)
{
	char	   *copy = pstrdup(name);
	List	   *parts;
	Oid			nsp;
	Oid			relid;
	int			n;

	if (!SplitIdentifierString(copy, '.', &parts))
		return InvalidOid;
	n = list_length(parts);
	if (n == 3 && strcmp((char *) linitial(parts), get_database_name(MyDatabaseId)) == 0)
	{
		parts = list_delete_first(parts);
		n = 2;
	}
	if (n == 1)
		relid = RelnameGetRelid((char *) linitial(parts));
	else if (n == 2)
	{
		nsp = get_namespace_oid((char *) linitial(parts), true);
		relid = OidIsValid(nsp) ? get_relname_relid((char *) lsecond(parts), nsp) : InvalidOid;
	}
	else
		relid = InvalidOid;
	return relid;
}

/*
 * Canonicalise a resource name into out (TENANCY_RESOURCE_LEN bytes):
 * rows:<table> names the table schema-qualified, as regclass::text prints
 * it with search_path = pg_catalog, whatever the caller's search_path.
 * 22023 for an empty or too long name, or a table that does not exist.
 */
static void
canonical_resource(const char *in, char *out)
{
	if (in == NULL || in[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: resource must not be empty"),
				 errhint("Name a resource such as 'api_calls', 'storage_bytes' or 'rows:public.orders'.")));
	if (strncmp(in, "rows:", 5) == 0)
	{
		Oid			relid = table_of_resource_name(in + 5);
		char	   *name;

		if (!OidIsValid(relid) || get_rel_relkind(relid) == 0 ||
			(get_rel_relkind(relid) != RELKIND_RELATION &&
			 get_rel_relkind(relid) != RELKIND_PARTITIONED_TABLE))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("tenancy: resource \"%s\" names no table", in),
					 errhint("rows:<table> takes a table name as regclass accepts it, e.g. 'rows:public.orders'.")));
		name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
										  get_rel_name(relid));
		if (strlen(name) + 5 >= TENANCY_RESOURCE_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("tenancy: resource name is too long"),
					 errdetail("Resource names are limited to %d bytes.", TENANCY_RESOURCE_LEN - 1)));
		memset(out, 0, TENANCY_RESOURCE_LEN);
		snprintf(out, TENANCY_RESOURCE_LEN, "rows:%s", name);
		return;
	}
	if (strlen(in) >= TENANCY_RESOURCE_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: resource name is too long"),
				 errdetail("Resource names are limited to %d bytes.", TENANCY_RESOURCE_LEN - 1)));
	memset(out, 0, TENANCY_RESOURCE_LEN);
	strlcpy(out, in, TENANCY_RESOURCE_LEN);
}

/* Fetch a resource argument, canonicalised, or raise 22023. */
void
tenancy_quota_resource_arg(FunctionCallInfo fcinfo, int argno, char *out)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: resource must not be null"),
				 errhint("Name a resource such as 'api_calls'.")));
	canonical_resource(text_to_cstring(PG_GETARG_TEXT_PP(argno)), out);
}

/*
 * The tenant a function acts for: its "tenant" argument when given (for
 * administrators; others get 42501 for any tenant not their own, whether
 * it exists or not), else the validated context (TN001 without one).
 * Returns whether the caller is acting through the argument.
 */
bool
tenancy_quota_tenant_arg(FunctionCallInfo fcinfo, int argno, pg_uuid_t *out)
{
	TenancyTenant tenant;
	char	   *arg;

	if (argno >= PG_NARGS() || PG_ARGISNULL(argno))
	{
		memcpy(out, tenancy_context_current(), sizeof(pg_uuid_t));
		return false;
	}
	arg = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (tenancy_context_is_admin())
		tenancy_tenant_resolve(arg, &tenant);
	else if (!tenancy_tenant_try_resolve(arg, &tenant))
	{
		pg_uuid_t	nobody;

		memset(&nobody, 0, sizeof(nobody));
		tenancy_context_require_own(&nobody);	/* raises 42501 */
	}
	else
		tenancy_context_require_own(&tenant.id);
	memcpy(out, &tenant.id, sizeof(pg_uuid_t));
	return true;
}

/* A tenant's slug for messages (its uuid when it has none any more). */
static char *
tenant_label(const pg_uuid_t *tenant)
{
	TenancyTenant t;
	char		buf[TENANCY_UUID_STRLEN + 1];

	if (tenancy_tenant_lookup(tenant, &t))
		return pstrdup(t.slug);
	tenancy_uuid_format(tenant, buf);
	return pstrdup(buf);
}

/* ---------- limits ---------- */

/*
 * The limit of a resource for a tenant: its own row of tenant_quotas, else
 * its plan's row of plan_quotas (none for the enterprise plan).  Cached per
 * backend for one limits generation; looked up with a fresh snapshot so a
 * REPEATABLE READ transaction does not cache a stale limit.
 */
static void
limit_lookup(const pg_uuid_t *tenant, const char *resource, bool *has_limit,
			 int64 *limit, int *period)
{
	LimitKey	key;
	LimitEntry *le;
	bool		found;

	tenancy_generation_cache(&limit_cache, &limit_cache_gen, "tenancy limits",
							 sizeof(LimitKey), sizeof(LimitEntry));
	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	memcpy(&key.tenant, tenant, sizeof(pg_uuid_t));
	strlcpy(key.resource, resource, TENANCY_RESOURCE_LEN);
	le = hash_search(limit_cache, &key, HASH_FIND, &found);
	if (!found)
	{
		AsOwner		s;
		Oid			types[2] = {UUIDOID, TEXTOID};
		Datum		values[2];
		bool		isnull;
		bool		hl = false;
		int64		lim = 0;
		int			per = PERIOD_NONE;

		values[0] = UUIDPGetDatum(tenant);
		values[1] = CStringGetTextDatum(resource);
		as_owner_begin(&s);
		spi_read_latest("SELECT q.quota_limit, q.period FROM tenancy.tenants t "
						"CROSS JOIN LATERAL ("
						"  SELECT tq.quota_limit, tq.period, 1 AS src FROM tenancy.tenant_quotas tq"
						"   WHERE tq.tenant_id OPERATOR(pg_catalog.=) t.id"
						"     AND tq.resource OPERATOR(pg_catalog.=) $2"
						"  UNION ALL"
						"  SELECT pq.quota_limit, pq.period, 2 FROM tenancy.plan_quotas pq"
						"   WHERE pq.plan OPERATOR(pg_catalog.=) t.plan"
						"     AND t.plan OPERATOR(pg_catalog.<>) 'enterprise'"
						"     AND pq.resource OPERATOR(pg_catalog.=) $2"
						"  ORDER BY 3 LIMIT 1) q "
						"WHERE t.id OPERATOR(pg_catalog.=) $1",
						2, types, values);
		if (SPI_processed > 0)
		{
			lim = spi_int64(0, 1, &isnull);
			hl = !isnull;
			if (hl)
			{
				char	   *p = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

				per = period_from_text(p);
			}
		}
		as_owner_end(&s);
		/* Automatic resources are running totals whatever a row says. */
		if (resource_is_automatic(resource))
			per = PERIOD_NONE;
		le = hash_search(limit_cache, &key, HASH_ENTER, &found);
		le->has_limit = hl;
		le->limit = lim;
		le->period = per;
	}
	*has_limit = le->has_limit;
	*limit = le->limit;
	*period = le->period;
}

/* ---------- shared counters ---------- */

static void
make_key(QuotaKey *key, const pg_uuid_t *tenant, const char *resource,
		 TimestampTz pstart)
{
	memset(key, 0, sizeof(QuotaKey));
	key->dbid = MyDatabaseId;
	memcpy(&key->tenant, tenant, sizeof(pg_uuid_t));
	key->period_start = pstart;
	strlcpy(key->resource, resource, TENANCY_RESOURCE_LEN);
}

/* The committed usage of a counter according to the ledger, read fresh. */
static int64
ledger_sum(const QuotaKey *key)
{
	AsOwner		s;
	Oid			types[3] = {UUIDOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[3];
	bool		isnull;
	int64		sum;

	values[0] = UUIDPGetDatum(&key->tenant);
	values[1] = CStringGetTextDatum(key->resource);
	values[2] = TimestampTzGetDatum(key->period_start);
	as_owner_begin(&s);
	spi_read_latest("SELECT pg_catalog.sum(delta)::pg_catalog.int8 FROM tenancy.quota_ledger"
					" WHERE tenant_id OPERATOR(pg_catalog.=) $1"
					"   AND resource OPERATOR(pg_catalog.=) $2"
					"   AND period_start OPERATOR(pg_catalog.=) $3",
					3, types, values);
	sum = spi_int64(0, 1, &isnull);
	as_owner_end(&s);
	return sum < 0 ? 0 : sum;
}

static int
cmp_uint64(const void *a, const void *b)
{
	uint64		x = *(const uint64 *) a;
	uint64		y = *(const uint64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/*
 * Remove about a quarter of the unpinned entries, least recently used
 * first.  Caller holds the lock exclusively.  Their usage is in the
 * ledger (entries with deltas waiting to be written are kept): they are
 * rebuilt from it when next used.
 */
static void
evict_entries(void)
{
	HASH_SEQ_STATUS seq;
	QuotaEntry *e;
	uint64	   *ages;
	int			n = 0;
	int			cap = hash_get_num_entries(quota_hash);
	uint64		cutoff;

	ages = palloc(sizeof(uint64) * Max(cap, 1));
	hash_seq_init(&seq, quota_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->pins == 0 && e->waiting == 0 && n < cap)
			ages[n++] = e->last_used;
	if (n == 0)
	{
		pfree(ages);
		return;
	}
	qsort(ages, n, sizeof(uint64), cmp_uint64);
	cutoff = ages[Min(n - 1, n / 4)];
	pfree(ages);
	hash_seq_init(&seq, quota_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->pins == 0 && e->waiting == 0 && e->last_used <= cutoff)
			hash_search(quota_hash, &e->key, HASH_REMOVE, NULL);
	quota_shared->evictions++;
}

/* Pin a counter found under lock, mark it used, release the lock. */
static QuotaEntry *
entry_pin(QuotaEntry *e, uint64 tick, LWLock *lock)
{
	SpinLockAcquire(&e->mutex);
	e->pins++;
	e->last_used = tick;
	SpinLockRelease(&e->mutex);
	LWLockRelease(lock);
	return e;
}

/*
 * Find or create the shared counter of key and pin it.  A new counter is
 * built from the ledger, read before taking the exclusive lock; if any
 * counter was evicted meanwhile the read is repeated, since the evicted
 * one might have been this one with newer usage.
 */
static QuotaEntry *
entry_acquire(const QuotaKey *key)
{
	LWLock	   *lock = tenancy_shmem_lock(TENANCY_LOCK_QUOTA);
	QuotaEntry *e;
	uint64		tick = pg_atomic_fetch_add_u64(&quota_shared->clock, 1);

	for (;;)
	{
		uint64		evictions;
		int64		sum;
		bool		found;

		LWLockAcquire(lock, LW_SHARED);
		e = hash_search(quota_hash, key, HASH_FIND, NULL);
		if (e)
			return entry_pin(e, tick, lock);
		evictions = quota_shared->evictions;
		LWLockRelease(lock);

		sum = ledger_sum(key);

		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = hash_search(quota_hash, key, HASH_FIND, NULL);
		if (e)
			return entry_pin(e, tick, lock);
		if (quota_shared->evictions != evictions)
		{
			LWLockRelease(lock);
			continue;
		}
		if (hash_get_num_entries(quota_hash) >= QUOTA_MAX_ENTRIES)
			evict_entries();
		if (hash_get_num_entries(quota_hash) >= QUOTA_MAX_ENTRIES)
		{
			LWLockRelease(lock);
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("tenancy: too many quota counters in use"),
					 errdetail("All %d shared quota counters are held by transactions in progress.",
							   QUOTA_MAX_ENTRIES),
					 errhint("Retry when fewer transactions are in progress.")));
		}
		e = hash_search(quota_hash, key, HASH_ENTER_NULL, &found);
		if (e == NULL)
		{
			LWLockRelease(lock);
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("tenancy: out of shared memory for quota counters")));
		}
		SpinLockInit(&e->mutex);
		e->committed = sum;
		e->reserved = 0;
		e->releasing = 0;
		e->waiting = 0;
		e->pins = 1;
		e->last_used = tick;
		LWLockRelease(lock);
		return e;
	}
}

/*
 * Read a counter without pinning it: committed usage and the amount
 * reserved by transactions in flight.  Builds it from the ledger if need
 * be (a cache fill, not a change of usage).
 */
static void
entry_peek(const QuotaKey *key, int64 *committed, int64 *reserved)
{
	QuotaEntry *e = entry_acquire(key);

	SpinLockAcquire(&e->mutex);
	*committed = e->committed;
	*reserved = e->reserved;
	e->pins--;
	SpinLockRelease(&e->mutex);
}

/*
 * The resources of a tenant's shared counters in this database that hold
 * committed usage (some of it may still wait to be written to the ledger).
 */
static List *
shared_resources(const pg_uuid_t *tenant)
{
	LWLock	   *lock = tenancy_shmem_lock(TENANCY_LOCK_QUOTA);
	HASH_SEQ_STATUS seq;
	QuotaEntry *e;
	List	   *names = NIL;

	/* (an error while the LWLock is held releases it: palloc is fine) */
	LWLockAcquire(lock, LW_SHARED);
	hash_seq_init(&seq, quota_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		bool		used;

		if (e->key.dbid != MyDatabaseId ||
			memcmp(&e->key.tenant, tenant, sizeof(pg_uuid_t)) != 0)
			continue;
		SpinLockAcquire(&e->mutex);
		used = e->committed != 0 || e->waiting != 0;
		SpinLockRelease(&e->mutex);
		if (used)
			names = lappend(names, pstrdup(e->key.resource));
	}
	LWLockRelease(lock);
	return names;
}

/* ---------- this transaction's records ---------- */

/*
 * The record of this transaction for (entry of key, relid) in the current
 * subtransaction, created (and the entry pinned) if missing.
 */
static Pending *
pending_get(const QuotaKey *key, Oid relid, int *index)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	QuotaEntry *e;
	int			i;

	for (i = npending - 1; i >= 0; i--)
	{
		Pending    *p = &pending[i];

		if (p->subid == subid && p->relid == relid &&
			memcmp(&p->entry->key, key, sizeof(QuotaKey)) == 0)
		{
			if (index)
				*index = i;
			return p;
		}
	}
	quota_register_callbacks();
	/* Room first, so that a pinned entry is never left without a record. */
	if (npending >= maxpending)
	{
		int			newmax = maxpending == 0 ? 16 : maxpending * 2;

		if (pending == NULL)
			pending = MemoryContextAlloc(TopMemoryContext, sizeof(Pending) * newmax);
		else
			pending = repalloc(pending, sizeof(Pending) * newmax);
		maxpending = newmax;
	}
	e = entry_acquire(key);
	i = npending++;
	pending[i].entry = e;
	pending[i].relid = relid;
	pending[i].subid = subid;
	pending[i].pos = 0;
	pending[i].neg = 0;
	if (index)
		*index = i;
	return &pending[i];
}

/* This transaction's net delta on an entry, over all its records. */
static int64
own_net(QuotaEntry *e)
{
	int64		net = 0;

	for (int i = 0; i < npending; i++)
		if (pending[i].entry == e)
			net += pending[i].pos - pending[i].neg;
	return net;
}

/*
 * What this transaction has reserved (give_back false) or is giving back
 * (give_back true) on an entry, over all its records.
 */
static int64
own_total(QuotaEntry *e, bool give_back)
{
	int64		total = 0;

	for (int i = 0; i < npending; i++)
		if (pending[i].entry == e)
			total += give_back ? pending[i].neg : pending[i].pos;
	return total;
}

/*
 * Reserve amount (> 0) on a record's counter if the limit allows it:
 * committed + reserved + amount <= limit.  When that fails, what this
 * transaction is giving back on the same counter is credited (a delete and
 * an insert in one transaction, a row moving between partitions): it is
 * certain to be given back if this transaction commits, and if it aborts
 * the reservation goes too.  Every record alive belongs to a
 * subtransaction that is still open, so an ancestor of the current one,
 * whose abort would take this reservation along.  Returns false, with the
 * committed usage in *used and what other transactions in flight have
 * reserved in *others, when it does not fit.
 */
static bool
pending_reserve(Pending *p, int64 amount, bool has_limit, int64 limit,
				int64 *used, int64 *others)
{
	QuotaEntry *e = p->entry;
	bool		ok;
	int64		credit = 0;
	int64		inflight = 0;

	*others = 0;
	for (int attempt = 0; attempt < 2; attempt++)
	{
		int64		total;
		bool		overflow;

		SpinLockAcquire(&e->mutex);
		*used = e->committed;
		inflight = e->reserved;
		/* past bigint: over any limit (TQ001), else out of range (22003) */
		overflow = pg_add_s64_overflow(e->committed, e->reserved, &total) ||
			pg_add_s64_overflow(total, amount, &total);
		ok = !overflow &&
			(!has_limit || (total - credit <= limit && total >= 0));
		if (ok)
			e->reserved += amount;
		SpinLockRelease(&e->mutex);
		if (overflow && !has_limit)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("tenancy: usage of resource \"%s\" would be out of range for type bigint",
							e->key.resource),
					 errdetail("Committed usage " INT64_FORMAT ", in flight " INT64_FORMAT ", amount " INT64_FORMAT ".",
							   *used, inflight, amount),
					 errhint("Release usage with tenancy.release_quota() first.")));
		if (ok || attempt > 0)
			break;
		credit = own_total(e, true);
		if (credit == 0)
			break;
	}
	if (ok)
		p->pos += amount;
	else						/* reserved holds this transaction's own too */
		*others = Max(inflight - own_total(e, false), 0);
	return ok;
}

/*
 * Take a reservation without looking at the limit (rows present when a
 * table is protected: they exist already).
 */
static void
pending_force(Pending *p, int64 amount)
{
	QuotaEntry *e = p->entry;

	SpinLockAcquire(&e->mutex);
	e->reserved += amount;
	SpinLockRelease(&e->mutex);
	p->pos += amount;
}

/*
 * Give back amount (> 0), never below zero: what can be given back is the
 * committed usage not already being given back by transactions in flight,
 * plus what this transaction reserved (its records all belong to open
 * subtransactions, ancestors of the current one: if one of them aborts,
 * this release goes too).  Returns what was given back.
 *
 * exact: the amount is usage that certainly exists (a row deleted, a
 * table's share given back) and is given back whole.  The row may have been
 * inserted by a transaction that has committed but not yet moved its
 * reservation to committed (that happens in its commit callback, after its
 * rows became visible), so committed usage can be short of it for a moment;
 * clamping would lose the release for good.
 */
static int64
pending_release(Pending *p, int64 amount, bool exact)
{
	QuotaEntry *e = p->entry;
	int64		mine = p->pos;
	int64		eff = 0;

	if (exact)
	{
		SpinLockAcquire(&e->mutex);
		e->releasing += amount;
		SpinLockRelease(&e->mutex);
		p->neg += amount;
		return amount;
	}
	for (int attempt = 0; attempt < 2; attempt++)
	{
		int64		avail;

		SpinLockAcquire(&e->mutex);
		/* releasing already holds this transaction's earlier releases */
		avail = e->committed - e->releasing + mine;
		eff = Min(amount, Max(avail, 0));
		if (eff == amount || attempt > 0)
		{
			e->releasing += eff;
			SpinLockRelease(&e->mutex);
			break;
		}
		SpinLockRelease(&e->mutex);
		mine = own_total(e, false);
	}
	p->neg += eff;
	return eff;
}

/* Undo a record's deltas in shared memory and unpin (abort). */
static void
pending_undo(Pending *p)
{
	QuotaEntry *e = p->entry;

	SpinLockAcquire(&e->mutex);
	e->reserved -= p->pos;
	e->releasing -= p->neg;
	e->pins--;
	SpinLockRelease(&e->mutex);
}

/*
 * Add delta to an entry's waiting deltas (caller holds its spinlock),
 * keeping the count of entries with deltas waiting.
 */
static void
entry_add_waiting(QuotaEntry *e, int64 delta)
{
	bool		was_waiting = e->waiting != 0;

	e->waiting += delta;
	if (was_waiting && e->waiting == 0)
		pg_atomic_fetch_sub_u32(&quota_shared->nwaiting, 1);
	else if (!was_waiting && e->waiting != 0)
		pg_atomic_fetch_add_u32(&quota_shared->nwaiting, 1);
}

/*
 * Make a record's deltas committed usage and unpin (commit).  reset: the
 * tenant was purged.  waits: the deltas were not written to the ledger by
 * this commit and wait in the entry.
 */
static void
pending_apply(Pending *p, bool reset, bool waits)
{
	QuotaEntry *e = p->entry;

	SpinLockAcquire(&e->mutex);
	e->reserved -= p->pos;
	e->releasing -= p->neg;
	if (reset)
		e->committed = 0;
	else
		e->committed += p->pos - p->neg;

	/*
	 * No clamp at zero: a row's delete can commit before the commit
	 * callback of the transaction that inserted it adds the row here (see
	 * pending_release), and the sum is right again once it has.
	 */
	if (waits && !reset)
		entry_add_waiting(e, p->pos - p->neg);
	e->pins--;
	SpinLockRelease(&e->mutex);
}

static void
pending_remove(int i)
{
	pending[i] = pending[npending - 1];
	npending--;
	pending_version++;
}

static bool
tenant_purged(const pg_uuid_t *tenant)
{
	ListCell   *lc;

	foreach(lc, purged_tenants)
		if (memcmp(lfirst(lc), tenant, sizeof(pg_uuid_t)) == 0)
			return true;
	return false;
}

/* Columns of tenancy.quota_ledger, in the order the install script makes. */
#define LEDGER_NATTS				6
#define Anum_ledger_tenant_id		1
#define Anum_ledger_resource		2
#define Anum_ledger_period_start	3
#define Anum_ledger_relid			4
#define Anum_ledger_delta			5
#define Anum_ledger_recorded_at		6

/*
 * The oid of tenancy.quota_ledger, looked up once per backend and forgotten
 * when an invalidation names it (the extension was dropped, the table
 * altered) or the relcache is reset.
 */
static Oid	ledger_relid = InvalidOid;
static bool ledger_callback_registered = false;

static void
ledger_relcache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == ledger_relid)
		ledger_relid = InvalidOid;
}

/*
 * Open tenancy.quota_ledger for an insert.  The cached oid is trusted only
 * if it is still cached once the lock is held (locking processes the
 * invalidations that would have forgotten it); otherwise look it up again.
 * Checks the columns are those ledger_write() forms.
 */
static Relation
ledger_open(void)
{
	static const Oid types[LEDGER_NATTS] = {UUIDOID, TEXTOID, TIMESTAMPTZOID,
	REGCLASSOID, INT8OID, TIMESTAMPTZOID};
	Relation	rel = NULL;
	TupleDesc	desc;

	if (!ledger_callback_registered)
	{
		CacheRegisterRelcacheCallback(ledger_relcache_callback, (Datum) 0);
		ledger_callback_registered = true;
	}
	if (OidIsValid(ledger_relid))
	{
		rel = try_relation_open(ledger_relid, RowExclusiveLock);
		if (rel != NULL && !OidIsValid(ledger_relid))
		{
			relation_close(rel, RowExclusiveLock);
			rel = NULL;
		}
	}
	if (rel == NULL)
	{
		Oid			relid = tenancy_relation_oid("quota_ledger", false);

		rel = table_open(relid, RowExclusiveLock);
		ledger_relid = relid;
	}
	desc = RelationGetDescr(rel);
	if (rel->rd_rel->relkind != RELKIND_RELATION || desc->natts != LEDGER_NATTS)
		elog(ERROR, "tenancy: tenancy.quota_ledger does not have the expected columns");
	for (int i = 0; i < LEDGER_NATTS; i++)
		if (TupleDescAttr(desc, i)->atttypid != types[i] ||
			TupleDescAttr(desc, i)->attisdropped)
			elog(ERROR, "tenancy: tenancy.quota_ledger does not have the expected columns");
	return rel;
}

/* GUC tenancy.synchronous_quota_commit (defined in guc.c) */
bool		tenancy_guc_synchronous_quota_commit = false;

/* A row to append to the ledger. */
typedef struct LedgerRow
{
	const QuotaKey *key;
	Oid			relid;
	int64		delta;
} LedgerRow;

/*
 * Append rows to the ledger: formed here and inserted with the table AM
 * and the indexes maintained, as the extension's owner: the cost of an
 * INSERT without parsing, planning or an executor (no triggers fire on the
 * ledger).
 */
static void
ledger_append(const LedgerRow *rows, int n)
{
	AsOwner		s;
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	MemoryContext oldcxt;
	Datum		values[LEDGER_NATTS];
	bool		nulls[LEDGER_NATTS];

	owner_switch(&s);
	rel = ledger_open();
	estate = CreateExecutorState();
	oldcxt = MemoryContextSwitchTo(estate->es_query_cxt);
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsHeapTuple);
	memset(nulls, false, sizeof(nulls));
	values[Anum_ledger_recorded_at - 1] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	for (int i = 0; i < n; i++)
	{
		const LedgerRow *r = &rows[i];

		values[Anum_ledger_tenant_id - 1] = UUIDPGetDatum(&r->key->tenant);
		values[Anum_ledger_resource - 1] = CStringGetTextDatum(r->key->resource);
		values[Anum_ledger_period_start - 1] = TimestampTzGetDatum(r->key->period_start);
		values[Anum_ledger_relid - 1] = ObjectIdGetDatum(r->relid);
		nulls[Anum_ledger_relid - 1] = !OidIsValid(r->relid);
		values[Anum_ledger_delta - 1] = Int64GetDatum(r->delta);
		ExecStoreHeapTuple(heap_form_tuple(RelationGetDescr(rel), values, nulls), slot, true);
		simple_table_tuple_insert(rel, slot);
		if (rri->ri_NumIndices > 0)
			ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);
		ResetPerTupleExprContext(estate);
	}
	ExecDropSingleTupleTableSlot(slot);
	ExecCloseIndices(rri);
	MemoryContextSwitchTo(oldcxt);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
	owner_restore(&s);
}

/* ---------- deltas waiting in shared memory ---------- */

/*
 * A commit that changed nothing but quota usage (no XID, or only tenancy
 * bookkeeping that may be lost) leaves its net deltas waiting in their
 * shared entries instead of appending ledger rows: its usage is committed
 * and visible to every session at once, and its commit writes nothing.
 * Some commit writes the waiting deltas of the database to the ledger
 * within about tenancy.quota_flush_delay: the first commit (of any session
 * of the database, any transaction that may write) after that delay, a
 * session that left deltas waiting when it exits, and tenancy._usage_flush()
 * (rollup_usage()).  An entry with deltas waiting is never evicted, so an
 * entry built from the ledger always is the committed usage.  A crash
 * loses the waiting deltas (doc/tenancy-quotas.md).
 */

static bool
quota_exit_needed(void)
{
	return left_waiting || ntaken > 0;
}

static void
quota_exit_flush(void)
{
	flush_requested = true;
}

/* Can this commit leave its n deltas waiting in shared memory? */
static bool
commit_may_wait(int n)
{
	return tenancy_guc_quota_flush_delay > 0 &&
		!tenancy_guc_synchronous_quota_commit &&
		!XactReadOnly &&
		purged_tenants == NIL &&
		!IsParallelWorker() &&
		tenancy_commit_only_bookkeeping() &&
		pg_atomic_read_u32(&quota_shared->nwaiting) + n <= QUOTA_MAX_WAITING;
}

/*
 * Before this backend may leave deltas waiting (at PRE_COMMIT: this may
 * fail, which it must not at COMMIT or ABORT).
 */
static void
ensure_exit_callback(void)
{
	tenancy_at_exit(quota_exit_needed, quota_exit_flush);
}

/*
 * Note that deltas wait (from now, unless some already did), and if mine,
 * that this backend left them (it writes them at exit).
 */
static void
note_waiting(bool mine)
{
	uint64		none = 0;

	if (pg_atomic_read_u64(&quota_shared->waiting_since) == 0)
		(void) pg_atomic_compare_exchange_u64(&quota_shared->waiting_since, &none,
											  (uint64) GetCurrentTransactionStartTimestamp());
	if (mine)
		left_waiting = true;
}

/*
 * May this commit write the waiting deltas?  Any transaction that may
 * write, in a session (no parallel or autovacuum worker), except a
 * serializable one: a user's serializable transaction should not risk a
 * serialization failure over tenancy's bookkeeping (it writes its own
 * deltas, though).
 */
static bool
may_take_waiting(void)
{
	return (MyBackendType == B_BACKEND || MyBackendType == B_BG_WORKER) &&
		!XactReadOnly && !IsolationIsSerializable() &&
		!RecoveryInProgress() && !IsParallelWorker();
}

/*
 * Should this commit write the waiting deltas?  When asked to, or when
 * some have waited tenancy.quota_flush_delay: then the first commit to
 * claim them (by clearing waiting_since) does.
 */
static bool
flush_due(void)
{
	uint64		since;

	if (quota_shared == NULL)
		return false;
	since = pg_atomic_read_u64(&quota_shared->waiting_since);
	if (flush_requested)
		return true;
	if (since == 0 ||
		!TimestampDifferenceExceeds((TimestampTz) since,
									GetCurrentTransactionStartTimestamp(),
									tenancy_guc_quota_flush_delay))
		return false;
	return pg_atomic_compare_exchange_u64(&quota_shared->waiting_since, &since, 0);
}

/*
 * Take every waiting delta of this database out of its entry, which stays
 * pinned until this transaction ends.  Waiting deltas of other databases
 * (and any beyond the room taken) are left for a commit a delay later.
 */
static void
waiting_take_all(void)
{
	LWLock	   *lock = tenancy_shmem_lock(TENANCY_LOCK_QUOTA);
	HASH_SEQ_STATUS seq;
	QuotaEntry *e;
	bool		others = false;
	int			room = ntaken + (int) pg_atomic_read_u32(&quota_shared->nwaiting) + 64;

	/* Room first: nothing may fail once deltas leave shared memory. */
	ensure_exit_callback();
	if (room > maxtaken)
	{
		if (taken == NULL)
			taken = MemoryContextAlloc(TopMemoryContext, sizeof(Taken) * room);
		else
			taken = repalloc(taken, sizeof(Taken) * room);
		maxtaken = room;
	}
	left_waiting = false;
	LWLockAcquire(lock, LW_SHARED);
	hash_seq_init(&seq, quota_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		SpinLockAcquire(&e->mutex);
		if (e->waiting != 0 && e->key.dbid == MyDatabaseId && ntaken < maxtaken)
		{
			taken[ntaken].entry = e;
			taken[ntaken].delta = e->waiting;
			ntaken++;
			entry_add_waiting(e, -e->waiting);
			e->pins++;
		}
		else if (e->waiting != 0)
			others = true;		/* another database's, or no room left */
		SpinLockRelease(&e->mutex);
	}
	LWLockRelease(lock);
	if (others)
		note_waiting(false);
}

/*
 * This transaction ends: unpin the entries of the deltas it took, putting
 * the deltas back if it did not write them (abort).
 */
static void
taken_end(bool put_back)
{
	for (int i = 0; i < ntaken; i++)
	{
		QuotaEntry *e = taken[i].entry;

		SpinLockAcquire(&e->mutex);
		if (put_back)
			entry_add_waiting(e, taken[i].delta);
		e->pins--;
		SpinLockRelease(&e->mutex);
	}
	if (put_back && ntaken > 0)
		note_waiting(true);
	ntaken = 0;
}

/* tenancy._usage_flush(): this transaction writes every waiting delta. */
void
tenancy_quota_request_flush(void)
{
	if (quota_shared != NULL)
	{
		quota_register_callbacks();
		flush_requested = true;
	}
}

/*
 * PRE_COMMIT: append this transaction's net deltas to the ledger (one row
 * per record whose net change is not zero).  It runs inside the
 * transaction, so the deltas commit with the data they count, or not at
 * all.  If the transaction changed nothing else, its deltas wait in shared
 * memory instead (above); with tenancy.quota_flush_delay = 0 or
 * tenancy.synchronous_quota_commit on they are written here.
 *
 * When due, the waiting deltas of the database are written too.  If the
 * transaction had no XID before tenancy's bookkeeping (it wrote nothing
 * else), its commit does not wait for the WAL flush, unless
 * tenancy.synchronous_quota_commit is on: see commit.c and
 * doc/tenancy-quotas.md.
 */
static void
ledger_write(void)
{
	LedgerRow  *rows;
	int			n = 0;
	int			k = 0;
	TenancySeenTenant seen = {0};

	for (int i = 0; i < npending; i++)
		if (pending[i].pos != pending[i].neg && !tenant_purged(&pending[i].entry->key.tenant))
			n++;
	if (n > 0 && !flush_requested && commit_may_wait(n))
	{
		ensure_exit_callback();
		defer_this_commit = true;
		return;
	}
	if (may_take_waiting() && flush_due())
	{
		Oid			ledger;

		waiting_take_all();
		ledger = ntaken > 0 ? tenancy_relation_oid("quota_ledger", true) : InvalidOid;
		if (ntaken > 0 && !OidIsValid(ledger))
			taken_end(false);	/* the extension was dropped: they go */

		/*
		 * A commit that writes only others' deltas, because they are due,
		 * does not wait for the ledger (locked by VACUUM FULL, say): its
		 * transaction is someone's own, and the deltas can wait longer.
		 */
		else if (ntaken > 0 && n == 0 && !flush_requested &&
				 !ConditionalLockRelationOid(ledger, RowExclusiveLock))
		{
			taken_end(true);
			return;
		}
	}
	if (n + ntaken == 0)
		return;
	PreventCommandIfReadOnly("INSERT");
	tenancy_commit_write_begin();

	rows = palloc(sizeof(LedgerRow) * (n + ntaken));
	for (int i = 0; i < npending; i++)
	{
		Pending    *p = &pending[i];

		if (p->pos == p->neg || tenant_purged(&p->entry->key.tenant))
			continue;
		rows[k].key = &p->entry->key;
		rows[k].relid = p->relid;
		rows[k].delta = p->pos - p->neg;
		k++;
	}
	for (int i = 0; i < ntaken; i++)
	{
		if (!tenancy_tenant_exists_seen(&taken[i].entry->key.tenant, &seen))
			continue;
		rows[k].key = &taken[i].entry->key;
		rows[k].relid = InvalidOid;
		rows[k].delta = taken[i].delta;
		k++;
	}
	if (k > 0)
		ledger_append(rows, k);
	pfree(rows);

	tenancy_commit_write_end(!tenancy_guc_synchronous_quota_commit);
}

/*
 * Forget shared counters of this database (of purged tenants only, when
 * purged_only), so that they are rebuilt from the ledger when next used.
 * With empty, their usage and waiting deltas go first (a purge; the
 * extension being created: no ledger holds this database's usage yet).
 * Entries that transactions in flight have pinned are kept (a record of
 * theirs points to them), emptied if asked; so are entries with deltas
 * waiting, as eviction keeps them.
 */
static void
forget_entries(bool purged_only, bool empty)
{
	LWLock	   *lock = tenancy_shmem_lock(TENANCY_LOCK_QUOTA);
	HASH_SEQ_STATUS seq;
	QuotaEntry *e;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, quota_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		bool		keep;

		if (e->key.dbid != MyDatabaseId ||
			(purged_only && !tenant_purged(&e->key.tenant)))
			continue;
		SpinLockAcquire(&e->mutex);
		if (empty)
		{
			e->committed = 0;
			entry_add_waiting(e, -e->waiting);
		}
		keep = e->pins > 0 || e->waiting != 0;
		SpinLockRelease(&e->mutex);
		if (!keep)
			hash_search(quota_hash, &e->key, HASH_REMOVE, NULL);
	}
	/* a counter being built from the ledger meanwhile reads it again */
	quota_shared->evictions++;
	LWLockRelease(lock);
}

/*
 * CREATE EXTENSION tenancy (through tenancy._forget_database_state()):
 * whatever shared memory still holds of an earlier tenancy in this
 * database goes.
 */
void
tenancy_quota_forget_database(void)
{
	if (quota_shared != NULL)
		forget_entries(false, true);
}

static void
quota_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			ledger_write();
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (npending > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("tenancy: cannot PREPARE a transaction that changed quota usage"),
						 errdetail("Quota reservations live in the session that made them."),
						 errhint("Commit the transaction without two-phase commit.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			for (int i = 0; i < npending; i++)
				pending_apply(&pending[i], tenant_purged(&pending[i].entry->key.tenant),
							  defer_this_commit);
			if (defer_this_commit)
				note_waiting(true);
			taken_end(false);
			if (purged_tenants != NIL)
				forget_entries(true, true);	/* purged tenants' counters */
			if (ledger_loaded)
				forget_entries(false, false);
			/* fall through */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
			{
				for (int i = 0; i < npending; i++)
					pending_undo(&pending[i]);
				taken_end(true);
			}
			defer_this_commit = false;
			flush_requested = false;
			ledger_loaded = false;
			if (npending > 0)
				pending_version++;
			npending = 0;
			if (purged_tenants != NIL)
			{
				list_free_deep(purged_tenants);
				purged_tenants = NIL;
			}
			if (bump_at_eoxact)
			{
				tenancy_shmem_bump_generation();
				bump_at_eoxact = false;
			}
			break;
		default:
			break;
	}
}

static void
quota_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	int			i;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		for (i = npending - 1; i >= 0; i--)
			if (pending[i].subid == mySubid)
			{
				pending_undo(&pending[i]);
				pending_remove(i);
			}

		/*
		 * Limits changed in this transaction (perhaps in the subtransaction,
		 * by a rename that moved them): what this backend cached since may
		 * be what the subtransaction wrote.  Look them up again.
		 */
		if (bump_at_eoxact)
			tenancy_shmem_bump_generation();
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (i = npending - 1; i >= 0; i--)
		{
			if (pending[i].subid != mySubid)
				continue;
			/* merge into the parent's record of the same counter, if any */
			for (int j = 0; j < npending; j++)
			{
				if (j != i && pending[j].subid == parentSubid &&
					pending[j].entry == pending[i].entry &&
					pending[j].relid == pending[i].relid)
				{
					QuotaEntry *e = pending[i].entry;

					pending[j].pos += pending[i].pos;
					pending[j].neg += pending[i].neg;
					SpinLockAcquire(&e->mutex);
					e->pins--;
					SpinLockRelease(&e->mutex);
					pending_remove(i);
					goto next;
				}
			}
			pending[i].subid = parentSubid;
	next:
			;
		}
	}
}

/* ---------- the internal API ---------- */

/*
 * TQ001 for amount more of resource: used is the usage the caller's
 * transaction sees, others what other transactions in flight hold on the
 * counter (reserved, not yet committed), named only when there is some.
 */
static void
raise_quota_exceeded(const pg_uuid_t *tenant, const char *resource,
					 int64 used, int64 others, int64 amount, int64 limit)
{
	char		denied[TENANCY_RESOURCE_LEN + 16];

	snprintf(denied, sizeof(denied), "quota_denied:%s", resource);
	tenancy_usage_record(tenant, denied, 1, true);
	resource = tenancy_display_resource(resource);
	if (others > 0)
		ereport(ERROR,
				(errcode(ERRCODE_TENANCY_QUOTA_EXCEEDED),
				 errmsg("tenancy: quota exceeded for resource \"%s\"", resource),
				 errdetail("Tenant \"%s\", resource \"%s\": used " INT64_FORMAT ", held by transactions in progress " INT64_FORMAT ", amount " INT64_FORMAT ", limit " INT64_FORMAT ".",
						   tenant_label(tenant), resource, used, others, amount, limit),
				 errhint("Free some usage, wait for the transactions in progress to end, or ask an administrator to raise the limit with tenancy.set_tenant_quota().")));
	ereport(ERROR,
			(errcode(ERRCODE_TENANCY_QUOTA_EXCEEDED),
			 errmsg("tenancy: quota exceeded for resource \"%s\"", resource),
			 errdetail("Tenant \"%s\", resource \"%s\": used " INT64_FORMAT ", amount " INT64_FORMAT ", limit " INT64_FORMAT ".",
					   tenant_label(tenant), resource, used, amount, limit),
			 errhint("Free some usage, or ask an administrator to raise the limit with tenancy.set_tenant_quota().")));
}

/*
 * Add delta to a tenant's usage of resource in this transaction, counted
 * against relid (the leaf table, for rows:/storage_bytes; else 0).  A
 * positive delta is checked against the limit when enforce is set (TQ001
 * when it would pass it); a negative one never takes usage below zero.
 * The cache, when given, remembers the record and limit between calls of
 * the same statement: no look-up per row.
 */
static void
quota_add_cached(TenancyQuotaCache *c, const pg_uuid_t *tenant,
				 const char *resource, Oid relid, int64 delta, bool enforce)
{
	Pending    *p = NULL;
	uint64		gen = tenancy_shmem_generation();
	int64		used;
	int64		others;
	TenancyQuotaCache local;

	if (delta == 0)
		return;
	if (c && c->valid && c->version == pending_version && c->gen == gen &&
		c->subid == GetCurrentSubTransactionId() && c->relid == relid &&
		c->index < npending &&
		memcmp(&c->tenant, tenant, sizeof(pg_uuid_t)) == 0)
		p = &pending[c->index];
	else
	{
		QuotaKey	key;
		bool		has_limit;
		int64		limit;
		int			period;
		int			index;

		limit_lookup(tenant, resource, &has_limit, &limit, &period);
		make_key(&key, tenant, resource, period_start(period));
		p = pending_get(&key, relid, &index);
		if (c)
		{
			c->valid = true;
			c->version = pending_version;
			c->gen = gen;
			c->subid = GetCurrentSubTransactionId();
			c->relid = relid;
			c->index = index;
			memcpy(&c->tenant, tenant, sizeof(pg_uuid_t));
			c->has_limit = has_limit;
			c->limit = limit;
		}
		else
		{
			local.has_limit = has_limit;
			local.limit = limit;
			c = &local;
		}
	}
	if (delta > 0)
	{
		if (!enforce)
			pending_force(p, delta);
		else if (!pending_reserve(p, delta, c->has_limit, c->limit, &used, &others))
			raise_quota_exceeded(tenant, resource, used + own_net(p->entry), others,
								 delta, c->limit);
	}
	else
		pending_release(p, -delta, true);
}

void
tenancy_quota_add(const pg_uuid_t *tenant, const char *resource, Oid relid,
				  int64 delta, bool enforce)
{
	quota_add_cached(NULL, tenant, resource, relid, delta, enforce);
}

void
tenancy_quota_add_cached(TenancyQuotaCache *c, const pg_uuid_t *tenant,
						 const char *resource, Oid relid, int64 delta,
						 bool enforce)
{
	quota_add_cached(c, tenant, resource, relid, delta, enforce);
}

/*
 * The share of a table in the usage of every tenant (rows:<root> and
 * storage_bytes rows of the ledger with this relid, plus this
 * transaction's own records) is given back: the table was truncated,
 * dropped or unprotected.  The caller holds a lock that excludes writers.
 */
void
tenancy_quota_forget_relation(Oid relid)
{
	AsOwner		s;
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	int			n;
	pg_uuid_t  *tenants;
	char	  **resources;
	int64	   *shares;
	MemoryContext outer = CurrentMemoryContext;

	tenancy_shmem_require();
	values[0] = ObjectIdGetDatum(relid);
	as_owner_begin(&s);
	spi_read_latest("SELECT tenant_id, resource, pg_catalog.sum(delta)::pg_catalog.int8"
					" FROM tenancy.quota_ledger"
					" WHERE relid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass"
					"   AND period_start OPERATOR(pg_catalog.=) '-infinity'"
					" GROUP BY 1, 2",
					1, types, values);
	n = (int) SPI_processed;
	tenants = MemoryContextAlloc(outer, sizeof(pg_uuid_t) * Max(n, 1));
	resources = MemoryContextAlloc(outer, sizeof(char *) * Max(n, 1));
	shares = MemoryContextAlloc(outer, sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

		memcpy(&tenants[i], DatumGetUUIDP(d), sizeof(pg_uuid_t));
		resources[i] = MemoryContextStrdup(outer, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2));
		shares[i] = spi_int64(i, 3, &isnull);
	}
	as_owner_end(&s);

	/*
	 * This transaction's own net deltas on the table, taken before the
	 * ledger's share is given back (that adds to the records of the
	 * current subtransaction).  Giving back appends records but never
	 * removes one: indexes hold.
	 */
	{
		int			nown = npending;
		int64	   *own = palloc(sizeof(int64) * Max(nown, 1));

		for (int i = 0; i < nown; i++)
			own[i] = pending[i].relid == relid ? pending[i].pos - pending[i].neg : 0;
		for (int i = 0; i < n; i++)
			if (shares[i] > 0)
				quota_add_cached(NULL, &tenants[i], resources[i], relid, -shares[i], false);
		/* released in the current subtransaction, undone if it aborts */
		for (int i = 0; i < nown; i++)
			if (own[i] > 0)
			{
				QuotaKey	key = pending[i].entry->key;

				pending_release(pending_get(&key, relid, NULL), own[i], true);
			}
		pfree(own);
	}
}

/*
 * Run a statement that writes, with a fresh snapshot (the latest committed
 * state, whatever the isolation level, plus this transaction's own
 * changes), its triggers firing.
 */
static void
spi_write_latest(const char *sql, int nargs, Oid *types, Datum *values)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);
	int			rc;

	if (plan == NULL)
		elog(ERROR, "tenancy: internal query failed: %s", SPI_result_code_string(SPI_result));
	rc = SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							  false, true, 0);
	if (rc < 0)
		elog(ERROR, "tenancy: internal query failed: %s", SPI_result_code_string(rc));
	SPI_freeplan(plan);
}

/*
 * The limits of rows:<table> name "from" become those of "to": rows of
 * plan_quotas and tenant_quotas are renamed, a row of the same plan or
 * tenant left under "to" (by a table of that name dropped before) giving
 * way, and each row moved is audited.  The caller is connected to SPI as
 * the extension's owner.
 */
static void
rename_limits(const char *from, const char *to)
{
	static const char *const statements[] = {
		"INSERT INTO tenancy.audit_log (action, tenant_id, target, details)"
		" SELECT 'quota.rename_plan', NULL, o.plan,"
		"        pg_catalog.jsonb_build_object('from', $1, 'to', $2,"
		"            'quota_limit', o.quota_limit, 'period', o.period,"
		"            'replaced', CASE WHEN n.plan IS NOT NULL THEN pg_catalog.jsonb_build_object("
		"                'quota_limit', n.quota_limit, 'period', n.period) END)"
		"   FROM tenancy.plan_quotas o"
		"   LEFT JOIN tenancy.plan_quotas n ON n.plan OPERATOR(pg_catalog.=) o.plan"
		"                                  AND n.resource OPERATOR(pg_catalog.=) $2"
		"  WHERE o.resource OPERATOR(pg_catalog.=) $1 ORDER BY o.plan",
		"DELETE FROM tenancy.plan_quotas n USING tenancy.plan_quotas o"
		" WHERE n.resource OPERATOR(pg_catalog.=) $2 AND o.resource OPERATOR(pg_catalog.=) $1"
		"   AND n.plan OPERATOR(pg_catalog.=) o.plan",
		"UPDATE tenancy.plan_quotas SET resource = $2 WHERE resource OPERATOR(pg_catalog.=) $1",
		"INSERT INTO tenancy.audit_log (action, tenant_id, target, details)"
		" SELECT 'quota.rename_tenant', o.tenant_id, COALESCE(t.slug, o.tenant_id::pg_catalog.text),"
		"        pg_catalog.jsonb_build_object('from', $1, 'to', $2,"
		"            'quota_limit', o.quota_limit, 'period', o.period,"
		"            'replaced', CASE WHEN n.tenant_id IS NOT NULL THEN pg_catalog.jsonb_build_object("
		"                'quota_limit', n.quota_limit, 'period', n.period) END)"
		"   FROM tenancy.tenant_quotas o"
		"   LEFT JOIN tenancy.tenants t ON t.id OPERATOR(pg_catalog.=) o.tenant_id"
		"   LEFT JOIN tenancy.tenant_quotas n ON n.tenant_id OPERATOR(pg_catalog.=) o.tenant_id"
		"                                    AND n.resource OPERATOR(pg_catalog.=) $2"
		"  WHERE o.resource OPERATOR(pg_catalog.=) $1 ORDER BY t.slug, o.tenant_id",
		"DELETE FROM tenancy.tenant_quotas n USING tenancy.tenant_quotas o"
		" WHERE n.resource OPERATOR(pg_catalog.=) $2 AND o.resource OPERATOR(pg_catalog.=) $1"
		"   AND n.tenant_id OPERATOR(pg_catalog.=) o.tenant_id",
		"UPDATE tenancy.tenant_quotas SET resource = $2 WHERE resource OPERATOR(pg_catalog.=) $1"
	};
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	values[0] = CStringGetTextDatum(from);
	values[1] = CStringGetTextDatum(to);
	for (size_t i = 0; i < lengthof(statements); i++)
		spi_write_latest(statements[i], 2, types, values);
}

/* A share of usage that moves from one name to another. */
typedef struct MovedShare
{
	pg_uuid_t	tenant;
	Oid			relid;
	int64		delta;
} MovedShare;

/*
 * The rows:<table> name of protected table root changes from "from" to
 * "to": ALTER TABLE ... RENAME TO or SET SCHEMA of root, or ALTER SCHEMA
 * ... RENAME TO of its schema (called by the ddl_command_end guard, in the
 * renaming transaction).  Usage and limits follow the table:
 *
 * - Writers are kept out until this transaction ends, and the
 *   transactions in flight that wrote the table are waited for, so that
 *   every delta counted under the old name by another session is committed
 *   (or gone) and in the ledger: root and, when it is partitioned, every
 *   partition (rows inserted into a partition directly lock only it) are
 *   locked in SHARE mode.  ALTER TABLE holds ACCESS EXCLUSIVE on root
 *   already; ALTER SCHEMA locks no table.
 * - Each tenant's usage under the old name moves to the new one as deltas
 *   of this transaction, per leaf table (the relid of the ledger), the way
 *   ATTACH and DETACH move a partition's share: minus the share under the
 *   old name, plus the share under the new one, without a limit check (the
 *   rows exist).  This transaction's own deltas under the old name move
 *   the same way.  So the move commits, or rolls back (also to a
 *   savepoint), with the rename; the shared counters take it at commit,
 *   as every delta, and the ledger keeps the table's share per leaf table
 *   for TRUNCATE and DROP.  Rows under the old name that sum to zero stay
 *   until tenancy._quota_compact() folds them away.
 * - The limits of the old name move to the new one (rename_limits()).
 *   The statement triggers of the tables of limits make every backend
 *   reload its limits.  set_*_quota() and clear_tenant_quota() resolve a
 *   rows:<table> name holding TENANCY_LOCK_QUOTA_NAMES in share mode until
 *   their transaction ends (tenancy._quota_resource()); it is taken here
 *   exclusively, so a limit being set on the old name meanwhile is moved
 *   (it committed first) or refused with 22023 (the name no longer
 *   resolves once this commits), never left behind.
 */
void
tenancy_quota_rename(Oid root, const char *from, const char *to)
{
	AsOwner		s;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	LOCKTAG		tag;
	MovedShare *moves;
	int			nmoves = 0;
	int			nshares;

	LockRelationOid(root, ShareLock);
	if (get_rel_relkind(root) == RELKIND_PARTITIONED_TABLE)
		(void) find_all_inheritors(root, ShareLock, NULL);
	TENANCY_SET_LOCKTAG(tag, TENANCY_LOCK_QUOTA_NAMES, 0);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);

	/*
	 * This transaction's own net deltas under the old name, taken before
	 * any is moved (moving appends records).
	 */
	moves = palloc(sizeof(MovedShare) * Max(npending, 1));
	for (int i = 0; i < npending; i++)
	{
		Pending    *p = &pending[i];

		if (p->entry->key.dbid != MyDatabaseId || p->pos == p->neg ||
			strcmp(p->entry->key.resource, from) != 0)
			continue;
		memcpy(&moves[nmoves].tenant, &p->entry->key.tenant, sizeof(pg_uuid_t));
		moves[nmoves].relid = p->relid;
		moves[nmoves].delta = p->pos - p->neg;
		nmoves++;
	}

	/* The committed shares, and the limits. */
	values[0] = CStringGetTextDatum(from);
	as_owner_begin(&s);
	spi_read_latest("SELECT tenant_id, relid::pg_catalog.oid, pg_catalog.sum(delta)::pg_catalog.int8"
					" FROM tenancy.quota_ledger"
					" WHERE resource OPERATOR(pg_catalog.=) $1"
					"   AND period_start OPERATOR(pg_catalog.=) '-infinity'"
					" GROUP BY 1, 2",
					1, types, values);
	nshares = (int) SPI_processed;
	moves = repalloc(moves, sizeof(MovedShare) * Max(nmoves + nshares, 1));
	for (int i = 0; i < nshares; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		MovedShare *m = &moves[nmoves];

		memcpy(&m->tenant, DatumGetUUIDP(d), sizeof(pg_uuid_t));
		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
		m->relid = isnull ? InvalidOid : DatumGetObjectId(d);
		m->delta = spi_int64(i, 3, &isnull);
		if (m->delta != 0)
			nmoves++;
	}
	rename_limits(from, to);
	as_owner_end(&s);

	if (nmoves > 0)
		tenancy_shmem_require();
	for (int i = 0; i < nmoves; i++)
	{
		quota_add_cached(NULL, &moves[i].tenant, from, moves[i].relid, -moves[i].delta, false);
		quota_add_cached(NULL, &moves[i].tenant, to, moves[i].relid, moves[i].delta, false);
	}
	pfree(moves);
}

/* ---------- SQL functions ---------- */

/* The usage of a tenant as this transaction sees it, and the limit. */
typedef struct QuotaState
{
	int64		used;			/* committed + this transaction's own net */
	int64		others;			/* reserved by other transactions in flight */
	int64		inflight;		/* committed + reserved by every transaction */
	bool		has_limit;
	int64		limit;
} QuotaState;

/* Count a tenant's unrevoked API keys (with a fresh snapshot if asked). */
static int64
count_api_keys(const pg_uuid_t *tenant, bool latest)
{
	AsOwner		s;
	Oid			types[1] = {UUIDOID};
	Datum		values[1];
	bool		isnull;
	int64		n;
	const char *sql = "SELECT pg_catalog.count(*) FROM tenancy.api_keys"
		" WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND revoked_at IS NULL";

	values[0] = UUIDPGetDatum(tenant);
	as_owner_begin(&s);
	if (latest)
		spi_read_latest(sql, 1, types, values);
	else if (SPI_execute_with_args(sql, 1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "tenancy: counting API keys failed");
	n = spi_int64(0, 1, &isnull);
	as_owner_end(&s);
	return n;
}

static void
quota_state(const pg_uuid_t *tenant, const char *resource, QuotaState *st)
{
	int			period;

	limit_lookup(tenant, resource, &st->has_limit, &st->limit, &period);
	if (strcmp(resource, "api_keys") == 0)
	{
		st->used = count_api_keys(tenant, false);
		st->others = 0;
		st->inflight = 0;
	}
	else
	{
		QuotaKey	key;
		int64		committed;
		int64		reserved;
		int64		mine_pos = 0;
		int64		mine_neg = 0;

		make_key(&key, tenant, resource, period_start(period));
		entry_peek(&key, &committed, &reserved);
		for (int i = 0; i < npending; i++)
			if (memcmp(&pending[i].entry->key, &key, sizeof(QuotaKey)) == 0)
			{
				mine_pos += pending[i].pos;
				mine_neg += pending[i].neg;
			}
		st->used = Max(committed + mine_pos - mine_neg, 0);

		/*
		 * What other transactions have reserved and not committed counts
		 * against the limit as consume_quota() counts it (reserved holds
		 * this transaction's own reservations too, already in used).
		 */
		st->others = Max(reserved - mine_pos, 0);
		/* without a limit, only bigint's range refuses */
		if (pg_add_s64_overflow(committed, reserved, &st->inflight))
			st->inflight = PG_INT64_MAX;
	}
}

/*
 * How much more a limited counter grants now: the limit less the usage
 * this transaction sees and what other transactions in flight hold, never
 * below 0.  consume_quota() grants exactly an amount <= this (its credit
 * for this transaction's own releases is in used).
 */
static int64
quota_room(const QuotaState *st)
{
	int64		load;

	if (pg_add_s64_overflow(st->used, st->others, &load) || load >= st->limit)
		return 0;
	return st->limit - load;
}

/*
 * The name of a resource as results print it.  Counters and meters are kept
 * under canonical, schema-qualified table names (rows:public.orders,
 * rows_inserted:public.orders, quota_denied:rows:public.orders); the SPEC
 * prints the table as regclass::text does, that is as the caller's
 * search_path shows it (rows:orders when public is on the path).  Other
 * names, and names of tables that no longer exist, print as they are.
 */
char *
tenancy_display_resource(const char *resource)
{
	static const char *const prefixes[] = {
		"rows:", "rows_inserted:", "rows_deleted:", "quota_denied:rows:"
	};

	for (size_t i = 0; i < lengthof(prefixes); i++)
	{
		size_t		len = strlen(prefixes[i]);
		Oid			relid;

		if (strncmp(resource, prefixes[i], len) != 0)
			continue;
		relid = table_of_resource_name(resource + len);
		if (!OidIsValid(relid))
			break;
		return psprintf("%s%s", prefixes[i],
						DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(relid))));
	}
	return pstrdup(resource);
}

/* Build a tenancy.quota_check tuple for amount more of resource. */
static HeapTuple
quota_check_tuple(TupleDesc desc, const pg_uuid_t *tenant, const char *resource,
				  int64 amount, QuotaState *st)
{
	Datum		values[8];
	bool		nulls[8] = {false};
	bool		allowed;
	const char *health;
	pg_uuid_t  *t = palloc(sizeof(pg_uuid_t));

	memcpy(t, tenant, sizeof(pg_uuid_t));
	if (!st->has_limit)
		allowed = st->inflight <= 0 || amount <= PG_INT64_MAX - st->inflight;
	else
		allowed = amount <= quota_room(st);

	/*
	 * The share used is compared as a quotient: used / limit is rounded
	 * once, as the ratio was when it was read, so exactly at the ratio
	 * (7 of 100 at 0.07) is warning; ratio * limit would be rounded
	 * differently (0.07 * 100 = 7.000000000000001).  limit > 0 here.
	 */
	if (!st->has_limit)
		health = "good";
	else if (st->used >= st->limit)
		health = "critical";
	else if ((double) st->used / (double) st->limit >= tenancy_guc_soft_limit_ratio)
		health = "warning";
	else
		health = "good";

	values[0] = UUIDPGetDatum(t);
	values[1] = CStringGetTextDatum(tenancy_display_resource(resource));
	values[2] = BoolGetDatum(allowed);
	values[3] = Int64GetDatum(st->used);
	if (st->has_limit)
	{
		values[4] = Int64GetDatum(st->limit);
		values[5] = Int64GetDatum(quota_room(st));
	}
	else
		nulls[4] = nulls[5] = true;
	values[6] = CStringGetTextDatum(health);
	if (allowed)
		nulls[7] = true;
	else if (!st->has_limit)
		values[7] = CStringGetTextDatum(psprintf("Tenant \"%s\" has used " INT64_FORMAT " of resource \"%s\"; "
												 INT64_FORMAT " more would take it past " INT64_FORMAT ", the most a counter holds.",
												 tenant_label(tenant), st->used, tenancy_display_resource(resource),
												 amount, PG_INT64_MAX));
	else if (st->others > 0)
		values[7] = CStringGetTextDatum(psprintf("Tenant \"%s\" has used " INT64_FORMAT " of resource \"%s\" "
												 "and transactions in progress hold " INT64_FORMAT " more; "
												 INT64_FORMAT " more would pass its limit of " INT64_FORMAT ".",
												 tenant_label(tenant), st->used, tenancy_display_resource(resource),
												 st->others, amount, st->limit));
	else
		values[7] = CStringGetTextDatum(psprintf("Tenant \"%s\" has used " INT64_FORMAT " of resource \"%s\"; "
												 INT64_FORMAT " more would pass its limit of " INT64_FORMAT ".",
												 tenant_label(tenant), st->used, tenancy_display_resource(resource),
												 amount, st->limit));
	return heap_form_tuple(desc, values, nulls);
}

static int64
amount_arg(FunctionCallInfo fcinfo, int argno, const char *what, bool releasing)
{
	int64		amount;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: %s must not be null", what)));
	amount = PG_GETARG_INT64(argno);
	if (amount < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: %s must not be negative", what),
				 releasing ? errhint("Use tenancy.consume_quota() to add usage.") :
				 errhint("Use tenancy.release_quota() to give usage back.")));
	return amount;
}

/*
 * SQL: tenancy.check_quota(resource text, amount bigint DEFAULT 1, tenant
 * text DEFAULT NULL) RETURNS tenancy.quota_check.  No side effect.
 */
Datum
tenancy_check_quota(PG_FUNCTION_ARGS)
{
	char		resource[TENANCY_RESOURCE_LEN];
	int64		amount;
	pg_uuid_t	tenant;
	TupleDesc	desc;
	QuotaState	st;

	tenancy_shmem_require();
	tenancy_quota_resource_arg(fcinfo, 0, resource);
	amount = amount_arg(fcinfo, 1, "amount", false);
	tenancy_quota_tenant_arg(fcinfo, 2, &tenant);
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "tenancy: check_quota must return a composite type");
	desc = BlessTupleDesc(desc);
	quota_state(&tenant, resource, &st);
	PG_RETURN_DATUM(HeapTupleGetDatum(quota_check_tuple(desc, &tenant, resource, amount, &st)));
}

/*
 * consume/release write the ledger at commit: refuse a read-only
 * transaction now (25006), not at COMMIT.
 */
static void
require_writable(void)
{
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("tenancy: cannot change quota usage in a read-only transaction"),
				 errhint("Consume or release quota in a read-write transaction, on the primary.")));
}

/* Refuse automatic resources in consume/release (22023). */
static void
require_explicit(const char *resource, const char *fn)
{
	if (resource_is_automatic(resource))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: resource \"%s\" is counted automatically", resource),
				 errdetail("rows:<table>, storage_bytes and api_keys follow the data; %s() applies to other resources.", fn),
				 errhint("Insert or delete rows, or create or revoke keys, instead.")));
}

/* The arguments and counter of consume_quota() / release_quota(). */
typedef struct ExplicitCall
{
	char		resource[TENANCY_RESOURCE_LEN];
	int64		amount;
	pg_uuid_t	tenant;
	bool		has_limit;
	int64		limit;
	Pending    *p;
} ExplicitCall;

/*
 * Read the arguments of consume_quota() or release_quota() (named fn) and
 * find the context tenant's counter of the resource in its current period.
 */
static void
explicit_call(FunctionCallInfo fcinfo, const char *fn, ExplicitCall *call)
{
	int			period;
	QuotaKey	key;

	tenancy_shmem_require();
	tenancy_quota_resource_arg(fcinfo, 0, call->resource);
	call->amount = amount_arg(fcinfo, 1, "amount", strcmp(fn, "release_quota") == 0);
	require_explicit(call->resource, fn);
	require_writable();
	memcpy(&call->tenant, tenancy_context_current(), sizeof(pg_uuid_t));

	limit_lookup(&call->tenant, call->resource, &call->has_limit, &call->limit, &period);
	make_key(&key, &call->tenant, call->resource, period_start(period));
	call->p = pending_get(&key, InvalidOid, NULL);
}

/* The usage of a counter as this transaction sees it. */
static int64
visible_usage(Pending *p)
{
	int64		used;

	SpinLockAcquire(&p->entry->mutex);
	used = p->entry->committed;
	SpinLockRelease(&p->entry->mutex);
	return Max(used + own_net(p->entry), 0);
}

/*
 * SQL: tenancy.consume_quota(resource text, amount bigint DEFAULT 1)
 * RETURNS bigint.  Checks and adds atomically for the context tenant;
 * returns the usage this transaction now sees.  TQ001 (usage unchanged) if
 * it would pass the limit.  Undone if the transaction rolls back.
 */
Datum
tenancy_consume_quota(PG_FUNCTION_ARGS)
{
	ExplicitCall call;
	int64		used;
	int64		others;

	explicit_call(fcinfo, "consume_quota", &call);
	if (call.amount > 0)
	{
		if (!pending_reserve(call.p, call.amount, call.has_limit, call.limit, &used, &others))
			raise_quota_exceeded(&call.tenant, call.resource, used + own_net(call.p->entry),
								 others, call.amount, call.limit);
		tenancy_usage_record(&call.tenant, call.resource, call.amount, false);
	}
	PG_RETURN_INT64(visible_usage(call.p));
}

/*
 * SQL: tenancy.release_quota(resource text, amount bigint DEFAULT 1)
 * RETURNS bigint.  Gives usage back (never below zero); returns the usage
 * this transaction now sees.
 */
Datum
tenancy_release_quota(PG_FUNCTION_ARGS)
{
	ExplicitCall call;

	explicit_call(fcinfo, "release_quota", &call);
	if (call.amount > 0)
		pending_release(call.p, call.amount, false);
	PG_RETURN_INT64(visible_usage(call.p));
}

/*
 * SQL: tenancy.quota_usage(tenant text DEFAULT NULL) RETURNS SETOF
 * tenancy.quota_check: every resource with a limit or usage, as
 * check_quota(resource, 1) reports it.
 */
Datum
tenancy_quota_usage(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	pg_uuid_t	tenant;
	AsOwner		s;
	Oid			types[1] = {UUIDOID};
	Datum		values[1];
	List	   *names = NIL;
	ListCell   *lc;
	MemoryContext outer = CurrentMemoryContext;

	tenancy_shmem_require();
	tenancy_quota_tenant_arg(fcinfo, 0, &tenant);
	InitMaterializedSRF(fcinfo, 0);

	values[0] = UUIDPGetDatum(&tenant);
	as_owner_begin(&s);
	if (SPI_execute_with_args(
							  "SELECT r FROM ("
							  " SELECT tq.resource AS r FROM tenancy.tenant_quotas tq"
							  "  WHERE tq.tenant_id OPERATOR(pg_catalog.=) $1"
							  " UNION SELECT pq.resource FROM tenancy.plan_quotas pq"
							  "   JOIN tenancy.tenants t ON t.plan OPERATOR(pg_catalog.=) pq.plan"
							  "  WHERE t.id OPERATOR(pg_catalog.=) $1"
							  "    AND t.plan OPERATOR(pg_catalog.<>) 'enterprise'"
							  " UNION SELECT l.resource FROM tenancy.quota_ledger l"
							  "  WHERE l.tenant_id OPERATOR(pg_catalog.=) $1"
							  " UNION SELECT 'api_keys' WHERE EXISTS (SELECT FROM tenancy.api_keys k"
							  "  WHERE k.tenant_id OPERATOR(pg_catalog.=) $1 AND k.revoked_at IS NULL)"
							  ") x ORDER BY 1",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "tenancy: listing quota resources failed");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(outer);

		names = lappend(names, pstrdup(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1)));
		MemoryContextSwitchTo(old);
	}
	as_owner_end(&s);

	/*
	 * Counters not (yet) in the ledger: this transaction's own, and those
	 * whose committed deltas wait in shared memory.
	 */
	for (int i = 0; i < npending; i++)
		if (memcmp(&pending[i].entry->key.tenant, &tenant, sizeof(pg_uuid_t)) == 0 &&
			pending[i].entry->key.dbid == MyDatabaseId)
			names = lappend(names, pstrdup(pending[i].entry->key.resource));
	names = list_concat(names, shared_resources(&tenant));

	foreach(lc, names)
	{
		const char *r = lfirst(lc);
		QuotaState	st;
		HeapTuple	tup;
		ListCell   *lc2;
		bool		dup = false;

		foreach(lc2, names)
		{
			if (lc2 == lc)
				break;
			if (strcmp(lfirst(lc2), r) == 0)
				dup = true;
		}
		if (dup || strlen(r) >= TENANCY_RESOURCE_LEN)
			continue;
		quota_state(&tenant, r, &st);
		if (!st.has_limit && st.used == 0)
			continue;
		tup = quota_check_tuple(rsinfo->setDesc, &tenant, r, 1, &st);
		tuplestore_puttuple(rsinfo->setResult, tup);
	}
	return (Datum) 0;
}

/*
 * SQL: tenancy._require_quota(tid uuid, resource text, amount bigint).
 * Raise TQ001 if taking amount more of resource would pass the tenant's
 * limit.  For api_keys (create_api_key calls it before inserting a key)
 * the creators of one tenant's keys are serialised by a transaction-level
 * lock in tenancy's own advisory lock space (tenancy.h: no session can
 * take or block it with pg_advisory_lock()) and the keys counted with a
 * fresh snapshot, so concurrent
 * creations cannot pass the limit at any isolation level.  For counters it
 * checks as check_quota() does (committed usage, this transaction's own
 * and what other transactions in flight hold), without taking anything.
 */
Datum
tenancy_require_quota(PG_FUNCTION_ARGS)
{
	pg_uuid_t	tenant;
	char		resource[TENANCY_RESOURCE_LEN];
	int64		amount;
	bool		has_limit;
	int64		limit;
	int			period;

	tenancy_shmem_require();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: tenant must not be null")));
	memcpy(&tenant, PG_GETARG_UUID_P(0), sizeof(pg_uuid_t));
	tenancy_quota_resource_arg(fcinfo, 1, resource);
	amount = amount_arg(fcinfo, 2, "amount", false);

	limit_lookup(&tenant, resource, &has_limit, &limit, &period);
	if (!has_limit)
		PG_RETURN_VOID();
	if (strcmp(resource, "api_keys") == 0)
	{
		LOCKTAG		tag;
		uint32		h;
		int64		used;

		memcpy(&h, tenant.data, sizeof(h));
		/* tenancy's own advisory lock space (tenancy.h), out of users' reach */
		TENANCY_SET_LOCKTAG(tag, TENANCY_LOCK_API_KEYS, h);
		(void) LockAcquire(&tag, ExclusiveLock, false, false);
		used = count_api_keys(&tenant, true);
		if (used > limit || amount > limit - used)
			raise_quota_exceeded(&tenant, resource, used, 0, amount, limit);
	}
	else
	{
		QuotaState	st;

		quota_state(&tenant, resource, &st);
		if (amount > quota_room(&st))
			raise_quota_exceeded(&tenant, resource, st.used, st.others, amount, limit);
	}
	PG_RETURN_VOID();
}

/*
 * SQL: tenancy._quota_resource(resource text, period text) RETURNS text.
 * The canonical name of a resource, for set_*_quota; 22023 when a period
 * is given for a resource counted automatically.
 */
Datum
tenancy_quota_canonical(PG_FUNCTION_ARGS)
{
	char		resource[TENANCY_RESOURCE_LEN];

	tenancy_shmem_require();

	/*
	 * A limit on rows:<table> is stored under the name resolved here: hold
	 * off the renames of protected tables until it is stored (see
	 * tenancy_quota_rename()), and resolve the name as a rename that
	 * committed meanwhile left it.
	 */
	if (!PG_ARGISNULL(0))
	{
		text	   *arg = PG_GETARG_TEXT_PP(0);

		if (VARSIZE_ANY_EXHDR(arg) >= 5 && strncmp(VARDATA_ANY(arg), "rows:", 5) == 0)
		{
			LOCKTAG		tag;

			TENANCY_SET_LOCKTAG(tag, TENANCY_LOCK_QUOTA_NAMES, 0);
			(void) LockAcquire(&tag, ShareLock, false, false);
			AcceptInvalidationMessages();
		}
	}
	tenancy_quota_resource_arg(fcinfo, 0, resource);
	if (!PG_ARGISNULL(1) && resource_is_automatic(resource))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: resource \"%s\" cannot have a period", resource),
				 errdetail("rows:<table>, storage_bytes and api_keys are running totals."),
				 errhint("Pass period => NULL.")));
	PG_RETURN_TEXT_P(cstring_to_text(resource));
}

/*
 * Trigger function tenancy._quota_limits_changed(): statement triggers on
 * the tables of limits and on tenants' plans.  Bumps the limits generation
 * now (this session) and again when the transaction ends (everyone else,
 * who could have cached the old limit meanwhile).
 */
Datum
tenancy_quota_limits_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._quota_limits_changed() was not called by the trigger manager")));
	quota_register_callbacks();
	tenancy_shmem_bump_generation();
	bump_at_eoxact = true;
	return PointerGetDatum(NULL);
}

/*
 * Trigger function tenancy._quota_ledger_loaded(): AFTER INSERT, UPDATE,
 * DELETE or TRUNCATE of tenancy.quota_ledger, FOR EACH STATEMENT.  When
 * the statement at the top level writes the ledger (pg_restore
 * --data-only, or an administrator; tenancy's own appends fire no trigger
 * and its own SQL runs inside functions), the shared counters of the
 * database that are not in use and have no deltas waiting are forgotten
 * at commit, and rebuilt from the ledger when next used.
 */
Datum
tenancy_quota_ledger_loaded(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._quota_ledger_loaded() was not called by the trigger manager")));
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) || !TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._quota_ledger_loaded() must be fired AFTER ... FOR EACH STATEMENT")));
	if (quota_shared != NULL &&
		tenancy_top_level_write(RelationGetRelid(trigdata->tg_relation)) != TENANCY_TOP_NONE)
	{
		quota_register_callbacks();
		ledger_loaded = true;
	}
	return PointerGetDatum(NULL);
}

/*
 * SQL: tenancy._quota_purge(tid uuid).  Called by purge_tenant (through
 * _purge_tenant_state): drops this transaction's deltas for the tenant,
 * deletes its ledger rows, and at commit resets its shared counters.
 */
Datum
tenancy_quota_purge(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *tenant;
	AsOwner		s;
	Oid			types[1] = {UUIDOID};
	Datum		values[1];
	MemoryContext old;

	tenancy_shmem_require();
	quota_register_callbacks();
	old = MemoryContextSwitchTo(TopMemoryContext);
	tenant = palloc(sizeof(pg_uuid_t));
	memcpy(tenant, PG_GETARG_UUID_P(0), sizeof(pg_uuid_t));
	purged_tenants = lappend(purged_tenants, tenant);
	MemoryContextSwitchTo(old);

	values[0] = UUIDPGetDatum(tenant);
	as_owner_begin(&s);
	if (SPI_execute_with_args("DELETE FROM tenancy.quota_ledger WHERE tenant_id OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "tenancy: purging quota usage failed");
	as_owner_end(&s);
	PG_RETURN_VOID();
}
