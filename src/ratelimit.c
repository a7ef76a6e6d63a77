/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *		Rate limits: token buckets in shared memory, and the SQL functions
 *		check_rate, enforce_rate, rate_status and tenancy._rate_resource.
 *
 * A bucket per (database, tenant, resource) holds up to `burst` tokens and
 * refills at `per_second` tokens per second, measured with the wall clock.
 * Taking tokens is not transactional (a rolled back request still used
 * them), is shared by every backend of the server, and needs only the
 * bucket's spinlock once the bucket exists.  Buckets are not saved: after
 * a restart every bucket is full.  A full bucket and no bucket mean the
 * same, so when the table of tenancy.max_rate_buckets buckets is full, the
 * full ones are dropped to make room; only when none is full does a new
 * bucket fail (53200).
 *
 * The parameters (tenancy.tenant_rate_limits overriding
 * tenancy.plan_rate_limits; none for the enterprise plan) are cached per
 * backend for one limits generation (shmem.c).
 *
 * Locking: TENANCY_LOCK_RATE guards the hash table (shared to find,
 * exclusive to insert or drop), each bucket's spinlock its tokens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_check_rate);
PG_FUNCTION_INFO_V1(tenancy_enforce_rate);
PG_FUNCTION_INFO_V1(tenancy_rate_status);
PG_FUNCTION_INFO_V1(tenancy_rate_resource);

/* tenancy.max_rate_buckets (PGC_POSTMASTER), defined in guc.c. */
int			tenancy_guc_max_rate_buckets = 10000;

typedef struct RateKey
{
	Oid			dbid;
	pg_uuid_t	tenant;
	char		resource[TENANCY_RESOURCE_LEN];
} RateKey;

typedef struct RateBucket
{
	RateKey		key;			/* hash key: must be first */
	slock_t		mutex;
	double		tokens;
	TimestampTz last;			/* when tokens were last refilled */
	double		per_second;
	int			burst;
} RateBucket;

static HTAB *rate_hash = NULL;

/* Per-backend cache of rate limit parameters. */
typedef struct RateConf
{
	RateKey		key;
	bool		limited;
	double		per_second;
	int			burst;
} RateConf;

static HTAB *conf_cache = NULL;
static uint64 conf_cache_gen = 0;

Size
tenancy_ratelimit_shmem_size(void)
{
	return hash_estimate_size(tenancy_guc_max_rate_buckets, sizeof(RateBucket));
}

void
tenancy_ratelimit_shmem_startup(void)
{
	HASHCTL		info;

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(RateKey);
	info.entrysize = sizeof(RateBucket);
	rate_hash = ShmemInitHash("tenancy rate buckets",
							  tenancy_guc_max_rate_buckets, tenancy_guc_max_rate_buckets,
							  &info, HASH_ELEM | HASH_BLOBS);
}

/*
 * CREATE EXTENSION tenancy (through tenancy._forget_database_state()):
 * the buckets of an earlier tenancy in this database go (every bucket is
 * full again, as after a restart).  Buckets are used under the lock only.
 */
void
tenancy_ratelimit_forget_database(void)
{
	LWLock	   *lock;
	HASH_SEQ_STATUS seq;
	RateBucket *b;

	if (rate_hash == NULL)
		return;
	lock = tenancy_shmem_lock(TENANCY_LOCK_RATE);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, rate_hash);
	while ((b = hash_seq_search(&seq)) != NULL)
		if (b->key.dbid == MyDatabaseId)
			hash_search(rate_hash, &b->key, HASH_REMOVE, NULL);
	LWLockRelease(lock);
}

/* A resource name for rate limits: non-empty, not too long (22023). */
static void
rate_resource_arg(FunctionCallInfo fcinfo, int argno, char *out)
{
	char	   *s;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: resource must not be null"),
				 errhint("Name a resource such as 'api_requests'.")));
	s = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (s[0] == '\0' || strlen(s) >= TENANCY_RESOURCE_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: resource must be 1 to %d bytes long", TENANCY_RESOURCE_LEN - 1),
				 errhint("Name a resource such as 'api_requests'.")));
	memset(out, 0, TENANCY_RESOURCE_LEN);
	strlcpy(out, s, TENANCY_RESOURCE_LEN);
}

static void
make_key(RateKey *key, const pg_uuid_t *tenant, const char *resource)
{
	memset(key, 0, sizeof(RateKey));
	key->dbid = MyDatabaseId;
	memcpy(&key->tenant, tenant, sizeof(pg_uuid_t));
	strlcpy(key->resource, resource, TENANCY_RESOURCE_LEN);
}

/*
 * The rate limit of a resource for a tenant, cached for one generation
 * and read with a fresh snapshot.  Returns false when there is none.
 */
static bool
rate_conf(const RateKey *key, double *per_second, int *burst)
{
	RateConf   *rc;
	bool		found;

	tenancy_generation_cache(&conf_cache, &conf_cache_gen, "tenancy rate limits",
							 sizeof(RateKey), sizeof(RateConf));
	rc = hash_search(conf_cache, key, HASH_FIND, &found);
	if (!found)
	{
		Oid			types[2] = {UUIDOID, TEXTOID};
		Datum		values[2];
		Oid			save_user;
		int			save_sec;
		int			ret;
		bool		limited = false;
		double		ps = 0;
		int			b = 0;

		values[0] = UUIDPGetDatum(&key->tenant);
		values[1] = CStringGetTextDatum(key->resource);
		GetUserIdAndSecContext(&save_user, &save_sec);
		SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID, save_sec | SECURITY_LOCAL_USERID_CHANGE);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "tenancy: SPI_connect failed");
		PushActiveSnapshot(GetLatestSnapshot());
		ret = SPI_execute_with_args("SELECT q.per_second, q.burst FROM tenancy.tenants t "
									"CROSS JOIN LATERAL ("
									"  SELECT tr.per_second, tr.burst, 1 AS src FROM tenancy.tenant_rate_limits tr"
									"   WHERE tr.tenant_id OPERATOR(pg_catalog.=) t.id"
									"     AND tr.resource OPERATOR(pg_catalog.=) $2"
									"  UNION ALL"
									"  SELECT pr.per_second, pr.burst, 2 FROM tenancy.plan_rate_limits pr"
									"   WHERE pr.plan OPERATOR(pg_catalog.=) t.plan"
									"     AND t.plan OPERATOR(pg_catalog.<>) 'enterprise'"
									"     AND pr.resource OPERATOR(pg_catalog.=) $2"
									"  ORDER BY 3 LIMIT 1) q "
									"WHERE t.id OPERATOR(pg_catalog.=) $1",
									2, types, values, NULL, true, 0);
		PopActiveSnapshot();
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "tenancy: reading rate limits failed");
		if (SPI_processed > 0)
		{
			bool		n1,
						n2;
			Datum		d1 = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &n1);
			Datum		d2 = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &n2);

			if (!n1 && !n2)
			{
				limited = true;
				ps = DatumGetFloat8(d1);
				b = DatumGetInt32(d2);
			}
		}
		SPI_finish();
		SetUserIdAndSecContext(save_user, save_sec);

		rc = hash_search(conf_cache, key, HASH_ENTER, &found);
		rc->limited = limited;
		rc->per_second = ps;
		rc->burst = b;
	}
	*per_second = rc->per_second;
	*burst = rc->burst;
	return rc->limited;
}

/* Tokens of a bucket at time now (refill without taking). */
static double
refilled(const RateBucket *b, TimestampTz now)
{
	double		elapsed = (double) (now - b->last) / USECS_PER_SEC;
	double		t = b->tokens + Max(elapsed, 0.0) * b->per_second;

	return Min(t, (double) b->burst);
}

/* Drop the buckets that are full (no different from no bucket). */
static void
drop_full_buckets(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	RateBucket *b;

	hash_seq_init(&seq, rate_hash);
	while ((b = hash_seq_search(&seq)) != NULL)
	{
		bool		full;

		SpinLockAcquire(&b->mutex);
		full = refilled(b, now) >= (double) b->burst;
		SpinLockRelease(&b->mutex);
		if (full)
			hash_search(rate_hash, &b->key, HASH_REMOVE, NULL);
	}
}

/*
 * Find the bucket of key, creating it full if missing, and return it with
 * the hash table's lock held (shared when it existed, exclusive when it
 * was created): a bucket cannot be dropped while the caller uses it.
 */
static RateBucket *
bucket_get(const RateKey *key, double per_second, int burst, TimestampTz now)
{
	LWLock	   *lock = tenancy_shmem_lock(TENANCY_LOCK_RATE);
	RateBucket *b;
	bool		found;

	LWLockAcquire(lock, LW_SHARED);
	b = hash_search(rate_hash, key, HASH_FIND, NULL);
	if (b)
		return b;
	LWLockRelease(lock);

	LWLockAcquire(lock, LW_EXCLUSIVE);
	b = hash_search(rate_hash, key, HASH_FIND, NULL);
	if (b == NULL)
	{
		if (hash_get_num_entries(rate_hash) >= tenancy_guc_max_rate_buckets)
			drop_full_buckets(now);
		if (hash_get_num_entries(rate_hash) < tenancy_guc_max_rate_buckets)
			b = hash_search(rate_hash, key, HASH_ENTER_NULL, &found);
		if (b == NULL)
		{
			LWLockRelease(lock);
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("tenancy: no room for another rate limit bucket"),
					 errdetail("All %d buckets are in use by tenants that are being rate limited.",
							   tenancy_guc_max_rate_buckets),
					 errhint("Raise tenancy.max_rate_buckets in postgresql.conf and restart the server.")));
		}
		SpinLockInit(&b->mutex);
		b->tokens = burst;
		b->last = now;
		b->per_second = per_second;
		b->burst = burst;
	}
	return b;
}

/*
 * Milliseconds until missing tokens (> 0) come back at per_second: at
 * least 1, and at most PG_INT64_MAX for a rate so small that the wait does
 * not fit (a double beyond the int64 range must not be cast).
 */
static int64
wait_ms(double missing, double per_second)
{
	double		ms = ceil(missing * 1000.0 / per_second);

	if (isnan(ms) || ms >= (double) PG_INT64_MAX)
		return PG_INT64_MAX;
	return ms < 1.0 ? 1 : (int64) ms;
}

/*
 * Try to take cost tokens.  Returns true if taken; else false and the
 * wait in milliseconds until they would be there.
 */
static bool
take_tokens(const RateKey *key, int cost, double per_second, int burst,
			int64 *retry_ms)
{
	TimestampTz now = GetCurrentTimestamp();
	RateBucket *b = bucket_get(key, per_second, burst, now);
	bool		ok;
	double		t;

	SpinLockAcquire(&b->mutex);
	if (b->per_second != per_second || b->burst != burst)
	{
		/* the limit changed: keep the tokens, within the new burst */
		b->tokens = refilled(b, now);
		b->per_second = per_second;
		b->burst = burst;
		b->last = now;
	}
	t = refilled(b, now);
	ok = t >= cost;
	b->tokens = ok ? t - cost : t;
	b->last = now;
	SpinLockRelease(&b->mutex);
	LWLockRelease(tenancy_shmem_lock(TENANCY_LOCK_RATE));
	*retry_ms = ok ? 0 : wait_ms(cost - t, per_second);
	return ok;
}

static int
cost_arg(FunctionCallInfo fcinfo, int argno)
{
	int			cost;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: cost must not be null")));
	cost = PG_GETARG_INT32(argno);
	if (cost < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: cost must be at least 1"),
				 errdetail("The cost given is %d.", cost)));
	return cost;
}

/*
 * Common part of check_rate and enforce_rate: returns true when allowed,
 * else meters the denial and returns false with the wait.  A cost above
 * the burst is refused like any request that finds too few tokens (a
 * bucket never holds more than its burst, so it could never pass): false,
 * with *never set and nothing taken.
 */
static bool
rate_take(FunctionCallInfo fcinfo, RateKey *key, int *cost, int64 *retry_ms,
		  double *per_second, int *burst, bool *never)
{
	char		resource[TENANCY_RESOURCE_LEN];

	tenancy_shmem_require();
	rate_resource_arg(fcinfo, 0, resource);
	*cost = cost_arg(fcinfo, 1);
	make_key(key, tenancy_context_current(), resource);
	*retry_ms = 0;
	*never = false;
	if (!rate_conf(key, per_second, burst))
		return true;
	if (*cost > *burst)
		*never = true;
	else if (take_tokens(key, *cost, *per_second, *burst, retry_ms))
		return true;
	{
		char		denied[TENANCY_RESOURCE_LEN + 16];

		snprintf(denied, sizeof(denied), "rate_limited:%s", resource);
		tenancy_usage_record(&key->tenant, denied, 1, true);
	}
	return false;
}

/*
 * SQL: tenancy.check_rate(resource text, cost integer DEFAULT 1) RETURNS
 * boolean.  Takes cost tokens from the context tenant's bucket if there are
 * enough; else returns false.
 */
Datum
tenancy_check_rate(PG_FUNCTION_ARGS)
{
	RateKey		key;
	int			cost;
	int64		retry_ms;
	double		per_second;
	int			burst;
	bool		never;

	PG_RETURN_BOOL(rate_take(fcinfo, &key, &cost, &retry_ms, &per_second, &burst, &never));
}

/*
 * SQL: tenancy.enforce_rate(resource text, cost integer DEFAULT 1).  As
 * check_rate, raising TQ002 with the wait in the HINT when refused; for a
 * cost above the burst, which no wait would let pass, the HINT says so.
 */
Datum
tenancy_enforce_rate(PG_FUNCTION_ARGS)
{
	RateKey		key;
	int			cost;
	int64		retry_ms;
	double		per_second;
	int			burst;
	bool		never;

	if (rate_take(fcinfo, &key, &cost, &retry_ms, &per_second, &burst, &never))
		PG_RETURN_VOID();
	if (never)
		ereport(ERROR,
				(errcode(ERRCODE_TENANCY_RATE_LIMITED),
				 errmsg("tenancy: rate limit exceeded for resource \"%s\"", key.resource),
				 errdetail("The cost of %d is more than the burst of %d (the limit is %g per second): a bucket never holds more than its burst.",
						   cost, burst, per_second),
				 errhint("This cost can never be granted at once: split it into requests of at most %d, or ask an administrator to raise the burst.",
						 burst)));
	else
		ereport(ERROR,
				(errcode(ERRCODE_TENANCY_RATE_LIMITED),
				 errmsg("tenancy: rate limit exceeded for resource \"%s\"", key.resource),
				 errdetail("The limit is %g per second with a burst of %d.", per_second, burst),
				 errhint("retry after " INT64_FORMAT " ms", retry_ms)));
	PG_RETURN_VOID();
}

/*
 * SQL: tenancy.rate_status(resource text, tenant text DEFAULT NULL)
 * RETURNS TABLE(tokens float8, per_second float8, burst integer,
 * retry_after_ms bigint).  One row; takes nothing.  Without a limit:
 * NULL tokens, rate and burst, and no wait.
 */
Datum
tenancy_rate_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char		resource[TENANCY_RESOURCE_LEN];
	pg_uuid_t	tenant;
	RateKey		key;
	double		per_second;
	int			burst;
	Datum		values[4];
	bool		nulls[4] = {false};

	tenancy_shmem_require();
	rate_resource_arg(fcinfo, 0, resource);
	tenancy_quota_tenant_arg(fcinfo, 1, &tenant);
	InitMaterializedSRF(fcinfo, 0);
	make_key(&key, &tenant, resource);
	if (!rate_conf(&key, &per_second, &burst))
	{
		nulls[0] = nulls[1] = nulls[2] = true;
		values[3] = Int64GetDatum(0);
	}
	else
	{
		LWLock	   *lock = tenancy_shmem_lock(TENANCY_LOCK_RATE);
		TimestampTz now = GetCurrentTimestamp();
		RateBucket *b;
		double		t = burst;

		LWLockAcquire(lock, LW_SHARED);
		b = hash_search(rate_hash, &key, HASH_FIND, NULL);
		if (b)
		{
			SpinLockAcquire(&b->mutex);
			t = Min(refilled(b, now), (double) burst);
			SpinLockRelease(&b->mutex);
		}
		LWLockRelease(lock);
		values[0] = Float8GetDatum(t);
		values[1] = Float8GetDatum(per_second);
		values[2] = Int32GetDatum(burst);
		values[3] = Int64GetDatum(t >= 1.0 ? 0 : wait_ms(1.0 - t, per_second));
	}
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/* SQL: tenancy._rate_resource(resource text) RETURNS text: validated. */
Datum
tenancy_rate_resource(PG_FUNCTION_ARGS)
{
	char		resource[TENANCY_RESOURCE_LEN];

	tenancy_shmem_require();
	rate_resource_arg(fcinfo, 0, resource);
	PG_RETURN_TEXT_P(cstring_to_text(resource));
}
