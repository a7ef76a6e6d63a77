/*-------------------------------------------------------------------------
 *
 * tenant.c
 *		Looking tenants up, by id or by slug, without SPI.
 *
 * The lookups scan tenancy.tenants through its unique indexes with the
 * table access API, as the caller's snapshot sees it.  They bypass row
 * level security (which the rewriter applies, not the table AM), so they
 * are used only behind a privilege decision: the context check, or an
 * administrator's call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation_d.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_tenant_id);
PG_FUNCTION_INFO_V1(tenancy_tenant_status);

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

/* Copy the interesting columns of a tenants tuple into *out. */
static void
tenant_from_tuple(HeapTuple tuple, TupleDesc desc, TenancyTenant *out)
{
	bool		isnull;
	Datum		d;
	char	   *s;

	d = heap_getattr(tuple, Anum_tenants_id, desc, &isnull);
	memcpy(&out->id, DatumGetUUIDP(d), sizeof(pg_uuid_t));

	d = heap_getattr(tuple, Anum_tenants_slug, desc, &isnull);
	s = TextDatumGetCString(d);
	strlcpy(out->slug, s, sizeof(out->slug));

	d = heap_getattr(tuple, Anum_tenants_status, desc, &isnull);
	s = TextDatumGetCString(d);
	strlcpy(out->status, s, sizeof(out->status));

	/* An active tenant past its expiry is expired wherever status counts. */
	d = heap_getattr(tuple, Anum_tenants_expires_at, desc, &isnull);
	if (!isnull && strcmp(out->status, "active") == 0 &&
		DatumGetTimestampTz(d) <= GetCurrentTransactionStartTimestamp())
		strlcpy(out->status, "expired", sizeof(out->status));
}

/*
 * Scan one unique index of tenancy.tenants for a single key.  Returns
 * whether a row was found.
 */
static bool
tenant_scan(const char *indexname, AttrNumber attno, RegProcedure eqproc,
			Oid collation, Datum value, TenancyTenant *out)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	bool		found = false;
	Snapshot	snapshot;

	rel = table_open(tenancy_relation_oid("tenants", false), AccessShareLock);
	ScanKeyEntryInitialize(&key, 0, attno, BTEqualStrategyNumber, InvalidOid,
						   collation, eqproc, value);
	snapshot = ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
	scan = systable_beginscan(rel, tenancy_relation_oid(indexname, false), true, snapshot, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		tenant_from_tuple(tuple, RelationGetDescr(rel), out);
		found = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/* Look a tenant up by id.  Returns false when there is none. */
bool
tenancy_tenant_lookup(const pg_uuid_t *id, TenancyTenant *out)
{
	return tenant_scan("tenants_pkey", Anum_tenants_id, F_UUID_EQ, InvalidOid,
					   UUIDPGetDatum(id), out);
}

/*
 * Resolve a tenant given as a uuid's text or a slug.  Returns false when
 * none matches.
 */
bool
tenancy_tenant_try_resolve(const char *tenant, TenancyTenant *out)
{
	pg_uuid_t	id;

	if (tenancy_uuid_parse(tenant, &id))
		return tenancy_tenant_lookup(&id, out);
	if (strlen(tenant) >= NAMEDATALEN)
		return false;			/* longer than any slug */
	return tenant_scan("tenants_slug_key", Anum_tenants_slug, F_TEXTEQ,
					   C_COLLATION_OID, CStringGetTextDatum(tenant), out);
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
