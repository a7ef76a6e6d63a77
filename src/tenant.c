/*-------------------------------------------------------------------------
 *
 * tenant.c
 *		Looking tenants up, by id or by slug, without SPI.
 *
 * The lookups scan tenancy.tenants through its unique indexes with the
 * table access API.  They bypass row level security (which the rewriter
 * applies, not the table AM), so they are used only behind a privilege
 * decision: the context check, or an administrator's call.
 *
 * Look-ups by id, the one every transaction of a tenant session makes, go
 * through a backend-local cache of tenant rows.  A statement trigger on
 * tenancy.tenants (tenancy._tenants_changed) sends a relcache invalidation
 * at commit of any change; every backend processes it at the start of its
 * next transaction, and the relcache callback here then empties the cache.
 * So a status change still takes effect at the next transaction of every
 * session.  As catcache does, the cache is filled only from a snapshot taken
 * after the locks are held (so after pending invalidations were processed),
 * and not at all when an invalidation arrived during the look-up.  The
 * effective status (expiry) is computed at every look-up from the stored
 * row and the transaction's start time.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/parallel.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation_d.h"
#include "commands/trigger.h"
#include "storage/lmgr.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_tenant_id);
PG_FUNCTION_INFO_V1(tenancy_tenant_status);
PG_FUNCTION_INFO_V1(tenancy_tenants_changed);
PG_FUNCTION_INFO_V1(tenancy_purge_wait);

/* Column numbers of tenancy.tenants, in the order the install script makes. */
#define Anum_tenants_id			1
#define Anum_tenants_slug		2
#define Anum_tenants_status		5
#define Anum_tenants_expires_at 6

/*
 * The oid of relation tenancy.<relname> in this database.  When it is
 * missing (the extension is not installed here): InvalidOid if missing_ok,
 * else an error.
 */
Oid
tenancy_relation_oid(const char *relname, bool missing_ok)
{
	Oid			nsp = get_namespace_oid("tenancy", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid(relname, nsp) : InvalidOid;

	if (!OidIsValid(relid) && !missing_ok)
		elog(ERROR, "tenancy: relation tenancy.%s is missing", relname);
	return relid;
}

/*
 * The owner of a relation (the extension's owner for its tables), whose
 * rights tenancy's internal queries run with.  A relation that is gone:
 * InvalidOid if missing_ok, else an error.
 */
Oid
tenancy_relation_owner(Oid relid, bool missing_ok)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
	{
		if (!missing_ok)
			elog(ERROR, "tenancy: cache lookup failed for relation %u", relid);
		return InvalidOid;
	}
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * Does a tenant exist?  Usage and quota deltas written after the fact (a
 * purge meters the rows it deletes, carried denial records and waiting
 * deltas may be written after their tenant was purged) are dropped for a
 * tenant that no longer exists.  seen remembers the last answer: one
 * look-up per run of one tenant.
 */
bool
tenancy_tenant_exists_seen(const pg_uuid_t *id, TenancySeenTenant *seen)
{
	TenancyTenant t;

	if (!seen->valid || memcmp(&seen->id, id, sizeof(pg_uuid_t)) != 0)
	{
		seen->exists = tenancy_tenant_lookup(id, &t);
		memcpy(&seen->id, id, sizeof(pg_uuid_t));
		seen->valid = true;
	}
	return seen->exists;
}

/* A tenants row as stored: status before expiry is applied. */
typedef struct TenantRow
{
	TenancyTenant tenant;		/* status as stored */
	bool		expires;
	TimestampTz expires_at;
} TenantRow;

/* The cache of rows by id; see the file header. */
typedef struct TenantCacheEntry
{
	pg_uuid_t	id;				/* hash key */
	TenantRow	row;
} TenantCacheEntry;

#define TENANT_CACHE_MAX 4096

static HTAB *tenant_cache = NULL;
static Oid	tenant_cache_relid = InvalidOid;
static bool tenant_cache_stale = true;
static bool tenant_cache_callback_registered = false;

/* Relcache callback: a change of tenancy.tenants empties the cache. */
static void
tenant_cache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == tenant_cache_relid)
		tenant_cache_stale = true;
}

/* Make the cache ready for a look-up, emptying it if it went stale. */
static void
tenant_cache_prepare(void)
{
	if (!tenant_cache_callback_registered)
	{
		CacheRegisterRelcacheCallback(tenant_cache_callback, (Datum) 0);
		tenant_cache_callback_registered = true;
	}
	if (tenant_cache_stale || tenant_cache == NULL)
	{
		HASHCTL		ctl;

		if (tenant_cache != NULL)
			hash_destroy(tenant_cache);
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(pg_uuid_t);
		ctl.entrysize = sizeof(TenantCacheEntry);
		tenant_cache = hash_create("tenancy tenants", 64, &ctl, HASH_ELEM | HASH_BLOBS);
		tenant_cache_stale = false;
		tenant_cache_relid = tenancy_relation_oid("tenants", false);
	}
}

/* Copy the interesting columns of a tenants tuple into *out. */
static void
row_from_tuple(HeapTuple tuple, TupleDesc desc, TenantRow *out)
{
	bool		isnull;
	Datum		d;
	char	   *s;

	memset(out, 0, sizeof(TenantRow));
	d = heap_getattr(tuple, Anum_tenants_id, desc, &isnull);
	memcpy(&out->tenant.id, DatumGetUUIDP(d), sizeof(pg_uuid_t));

	d = heap_getattr(tuple, Anum_tenants_slug, desc, &isnull);
	s = TextDatumGetCString(d);
	strlcpy(out->tenant.slug, s, sizeof(out->tenant.slug));

	d = heap_getattr(tuple, Anum_tenants_status, desc, &isnull);
	s = TextDatumGetCString(d);
	strlcpy(out->tenant.status, s, sizeof(out->tenant.status));

	d = heap_getattr(tuple, Anum_tenants_expires_at, desc, &isnull);
	out->expires = !isnull;
	if (!isnull)
		out->expires_at = DatumGetTimestampTz(d);
}

/* The tenant as its row says now: an active tenant past its expiry is expired. */
static void
row_effective(const TenantRow *row, TenancyTenant *out)
{
	memcpy(out, &row->tenant, sizeof(TenancyTenant));
	if (row->expires && strcmp(out->status, "active") == 0 &&
		row->expires_at <= GetCurrentTransactionStartTimestamp())
		strlcpy(out->status, "expired", sizeof(out->status));
}

/*
 * Fetch the row of relid whose unique index indexid has value in column
 * attno (compared with eqproc, under collation), and hand it to convert.
 * With fresh, read with a snapshot taken after the table and index locks
 * are held (so after the invalidations they bring were processed), for
 * the backend caches; else as the active (or transaction) snapshot sees
 * the table.  Bypasses privileges and row level security: callers decide
 * what to reveal.  Returns whether a row was found.
 */
bool
tenancy_fetch_unique(Oid relid, Oid indexid, AttrNumber attno, RegProcedure eqproc,
					 Oid collation, Datum value, bool fresh,
					 void (*convert) (HeapTuple tuple, TupleDesc desc, void *out),
					 void *out)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	bool		found = false;
	Snapshot	snapshot;

	rel = table_open(relid, AccessShareLock);
	LockRelationOid(indexid, AccessShareLock);
	ScanKeyEntryInitialize(&key, 0, attno, BTEqualStrategyNumber, InvalidOid,
						   collation, eqproc, value);
	if (fresh)
		snapshot = GetLatestSnapshot();
	else
		snapshot = ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
	scan = systable_beginscan(rel, indexid, true, snapshot, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		convert(tuple, RelationGetDescr(rel), out);
		found = true;
	}
	systable_endscan(scan);
	UnlockRelationOid(indexid, AccessShareLock);
	table_close(rel, AccessShareLock);
	return found;
}

static void
convert_tenant_row(HeapTuple tuple, TupleDesc desc, void *out)
{
	row_from_tuple(tuple, desc, (TenantRow *) out);
}

/*
 * Scan one unique index of tenancy.tenants for a single key (see
 * tenancy_fetch_unique).  Returns whether a row was found.
 */
static bool
tenant_scan(const char *indexname, AttrNumber attno, RegProcedure eqproc,
			Oid collation, Datum value, bool fresh, TenantRow *out)
{
	return tenancy_fetch_unique(tenancy_relation_oid("tenants", false),
								tenancy_relation_oid(indexname, false),
								attno, eqproc, collation, value, fresh,
								convert_tenant_row, out);
}

/* Look a tenant up by id, through the cache.  Returns false when there is none. */
bool
tenancy_tenant_lookup(const pg_uuid_t *id, TenancyTenant *out)
{
	TenantCacheEntry *entry;
	TenantRow	row;

	/* No fresh snapshot can be taken in parallel mode: no cache there. */
	if (IsInParallelMode())
	{
		if (!tenant_scan("tenants_pkey", Anum_tenants_id, F_UUID_EQ, InvalidOid,
						 UUIDPGetDatum(id), false, &row))
			return false;
		row_effective(&row, out);
		return true;
	}

	tenant_cache_prepare();
	entry = hash_search(tenant_cache, id, HASH_FIND, NULL);
	if (entry != NULL)
	{
		row_effective(&entry->row, out);
		return true;
	}
	if (!tenant_scan("tenants_pkey", Anum_tenants_id, F_UUID_EQ, InvalidOid,
					 UUIDPGetDatum(id), true, &row))
		return false;
	/* An invalidation that arrived during the look-up: do not keep it. */
	if (!tenant_cache_stale)
	{
		if (hash_get_num_entries(tenant_cache) >= TENANT_CACHE_MAX)
			tenant_cache_stale = true;
		else
		{
			entry = hash_search(tenant_cache, id, HASH_ENTER, NULL);
			entry->row = row;
		}
	}
	row_effective(&row, out);
	return true;
}

/*
 * Trigger function tenancy._tenants_changed(): AFTER INSERT, UPDATE,
 * DELETE or TRUNCATE, FOR EACH STATEMENT on tenancy.tenants.  Sends a
 * relcache invalidation of the table at commit, which empties every
 * backend's cache of tenant rows.
 */
Datum
tenancy_tenants_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._tenants_changed() must be fired AFTER, FOR EACH STATEMENT")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}

/*
 * Is s a valid slug: 3 to 32 characters of a-z, 0-9 and -, not starting or
 * ending with - (the CHECK constraint tenants_slug_check)?
 */
static bool
is_slug(const char *s)
{
	size_t		len = strlen(s);
	size_t		i;

	if (len < 3 || len > 32 || s[0] == '-' || s[len - 1] == '-')
		return false;
	for (i = 0; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
			return false;
	return true;
}

/*
 * Resolve a tenant given as a slug or a uuid's text.  Returns false when
 * none matches.
 *
 * A string that is a valid slug is always a slug: 32 lower-case hex digits
 * are both a slug and a uuid without hyphens, and must name the tenant with
 * that slug, never the tenant with that id (which may be another one).
 * Anything else is parsed as a uuid in any form uuid_in accepts; the
 * canonical form has 36 characters, so it is never a slug.
 */
bool
tenancy_tenant_try_resolve(const char *tenant, TenancyTenant *out)
{
	pg_uuid_t	id;
	TenantRow	row;

	if (!is_slug(tenant))
		return tenancy_uuid_parse(tenant, &id) && tenancy_tenant_lookup(&id, out);
	if (!tenant_scan("tenants_slug_key", Anum_tenants_slug, F_TEXTEQ,
					 C_COLLATION_OID, CStringGetTextDatum(tenant), false, &row))
		return false;
	row_effective(&row, out);
	return true;
}

/* As tenancy_tenant_try_resolve, raising TN002 when none matches. */
void
tenancy_tenant_resolve(const char *tenant, TenancyTenant *out)
{
	if (!tenancy_tenant_try_resolve(tenant, out))
		ereport(ERROR,
				(errcode(ERRCODE_TENANCY_UNKNOWN_TENANT),
				 errmsg("tenancy: unknown tenant"),
				 errdetail("No tenant has the slug or id \"%s\".", tenant),
				 errhint("Pass the slug or the id of an existing tenant.")));
}

/* Fetch a non-null "tenant text" argument or raise 22023. */
static char *
tenant_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: tenant must not be null"),
				 errhint("Pass a tenant's slug or id.")));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/* SQL: tenancy.tenant_id(tenant text) RETURNS uuid (administrators). */
Datum
tenancy_tenant_id(PG_FUNCTION_ARGS)
{
	TenancyTenant tenant;
	pg_uuid_t  *result = palloc(sizeof(pg_uuid_t));

	tenancy_tenant_resolve(tenant_arg(fcinfo, 0), &tenant);
	memcpy(result, &tenant.id, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(result);
}

/*
 * The tenant a session that may not act for any tenant can call its own:
 * the tenant of its binding, else tenancy.default_tenant when app.tenant_id
 * is empty.  (A non-empty app.tenant_id in an unbound, unprivileged session
 * came by a route that context.c refuses; it names nothing of its own.)
 */
static bool
own_tenant(pg_uuid_t *own)
{
	if (tenancy_context_binding(own, NULL))
		return true;
	if (tenancy_guc_tenant_id != NULL && tenancy_guc_tenant_id[0] != '\0')
		return false;
	return tenancy_guc_default_tenant != NULL &&
		tenancy_uuid_parse(tenancy_guc_default_tenant, own);
}

/*
 * SQL: tenancy.tenant_status(tenant text) RETURNS text, the effective
 * status: active, suspended, expired or deleted.
 *
 * Administrators and sessions that may act for any tenant may ask about
 * any tenant (TN002 for an unknown one).  Any other session only about its
 * own, and it gets 42501, never TN002, for any other tenant, existing or
 * not.  Unlike current_tenant_id() it does not fail for a tenant that is
 * not active: it is how a suspended tenant's session learns why.
 */
Datum
tenancy_tenant_status(PG_FUNCTION_ARGS)
{
	char	   *arg = tenant_arg(fcinfo, 0);
	TenancyTenant tenant;
	pg_uuid_t	own;

	if (tenancy_context_is_admin() ||
		(!tenancy_context_binding(&own, NULL) &&
		 tenancy_context_role_may_set_any(GetSessionUserId())))
		tenancy_tenant_resolve(arg, &tenant);
	else if (!own_tenant(&own) ||
			 !tenancy_tenant_try_resolve(arg, &tenant) ||
			 memcmp(own.data, tenant.id.data, UUID_LEN) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenancy: permission denied for another tenant"),
				 errdetail("This session may ask only about its own tenant."),
				 errhint("Call as a member of tenancy_admin.")));
	PG_RETURN_TEXT_P(cstring_to_text(tenant.status));
}

/*
 * SQL: tenancy._purge_wait(tid uuid) RETURNS integer, internal to
 * purge_tenant(), which calls it after locking the deleted tenant's row and
 * before deleting anything: waits until every other transaction that
 * validated a context for the tenant (and so may still write its rows) has
 * ended.  Transactions that validate later see the status deleted and fail
 * with TN003.  Returns how many transactions it waited for.
 */
Datum
tenancy_purge_wait(PG_FUNCTION_ARGS)
{
	tenancy_shmem_require();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: tenant must not be null"),
				 errhint("Pass a tenant's id.")));
	PG_RETURN_INT32(tenancy_shmem_wait_for_writers(PG_GETARG_UUID_P(0)));
}
