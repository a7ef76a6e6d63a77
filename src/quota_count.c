/*-------------------------------------------------------------------------
 *
 * quota_count.c
 *		The counting triggers of protected tables: rows:<table> and
 *		storage_bytes follow every INSERT, UPDATE, DELETE and TRUNCATE.
 *
 * tenancy_quota (AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW, enabled
 * ALWAYS) adds +1/-1 row and the stored size of the row's values to the
 * tenant of the row, through quota.c: a positive delta is reserved against
 * the limit (TQ001 fails the statement, so nothing of it remains), a
 * negative one is given back at commit.  It fires AFTER, on the tuple as
 * stored (toasted, compressed), and only for rows really written (not for
 * an INSERT ... ON CONFLICT DO NOTHING that skipped).  It also meters
 * rows_inserted:<table> and rows_deleted:<table> (usage.c), transactional.
 *
 * tenancy_quota_truncate (AFTER TRUNCATE) gives back the table's share of
 * every tenant's usage.  tenancy._quota_adopt() counts the rows a table
 * already has when it is protected; tenancy._quota_forget() gives a
 * table's share back when it is dropped or unprotected.
 *
 * Per statement, the trigger caches in fn_extra the tenant column, the
 * resource name and the counters it last used: no catalog or table
 * look-up per row.  The resource name of a table (which needs the root of
 * its partition tree and the names of table and schema) is also kept per
 * backend, until the next relcache or schema invalidation: a single-row
 * INSERT does not look it up in the catalogs each time.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/heapam.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/partition.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_quota_count);
PG_FUNCTION_INFO_V1(tenancy_quota_truncate);
PG_FUNCTION_INFO_V1(tenancy_quota_adopt);
PG_FUNCTION_INFO_V1(tenancy_quota_forget);

typedef struct CountState
{
	Oid			relid;
	int			tenant_attno;
	char		rows_resource[TENANCY_RESOURCE_LEN];
	char		inserted_resource[TENANCY_RESOURCE_LEN + 16];	/* usage meters */
	char		deleted_resource[TENANCY_RESOURCE_LEN + 16];
	Datum	   *values;
	bool	   *nulls;
	TenancyQuotaCache rows_cache;
	TenancyQuotaCache storage_cache;
} CountState;

/*
 * relid -> rows:<table> and the tenant column it is protected by (empty:
 * not in tenancy.protected_tables), per backend; emptied by any
 * invalidation (protect() and unprotect() alter the table).
 */
typedef struct ResourceName
{
	Oid			relid;
	char		rows_resource[TENANCY_RESOURCE_LEN];
	NameData	protected_column;
} ResourceName;

static HTAB *resource_names = NULL;

/*
 * Any relcache invalidation (a rename, a partition attached or detached,
 * a table dropped) or schema change empties the cache: a partition's name
 * depends on its root, whose invalidation names only the root.
 */
static void
resource_names_reset(Datum arg, Oid relid)
{
	if (resource_names != NULL)
	{
		hash_destroy(resource_names);
		resource_names = NULL;
	}
}

static void
resource_names_syscache_reset(Datum arg, int cacheid, uint32 hashvalue)
{
	resource_names_reset(arg, InvalidOid);
}

/*
 * The table whose rows:<table> counts relid's rows: the root of its
 * partition tree (relid itself when it is no partition).
 */
Oid
tenancy_quota_rows_root(Oid relid)
{
	if (get_rel_relispartition(relid))
	{
		List	   *ancestors = get_partition_ancestors(relid);

		if (ancestors != NIL)
			return llast_oid(ancestors);
	}
	return relid;
}

/*
 * rows:<table> for a relation (out: TENANCY_RESOURCE_LEN bytes): a
 * partition counts for the root of its partition tree, the table the user
 * protected and sets limits on.
 */
void
tenancy_quota_rows_name(Oid relid, char *out)
{
	Oid			root = tenancy_quota_rows_root(relid);
	char	   *name;

	name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(root)),
									  get_rel_name(root));
	memset(out, 0, TENANCY_RESOURCE_LEN);
	snprintf(out, TENANCY_RESOURCE_LEN, "rows:%s", name);
}

/*
 * The tenant column tenancy.protected_tables lists for relid, or an empty
 * name.  Read with a fresh snapshot, as the catalogs are.
 */
static void
protected_column_lookup(Oid relid, NameData *column)
{
	Oid			registry = tenancy_relation_oid("protected_tables", true);

	memset(column, 0, sizeof(NameData));
	if (OidIsValid(registry))
	{
		Relation	rel = table_open(registry, AccessShareLock);
		Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
		ScanKeyData key;
		TableScanDesc scan;
		HeapTuple	tuple;

		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
		scan = table_beginscan(rel, snapshot, 1, &key);
		if ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			bool		isnull;
			Datum		d = heap_getattr(tuple, 2, RelationGetDescr(rel), &isnull);

			if (!isnull)
				namestrcpy(column, NameStr(*DatumGetName(d)));
		}
		table_endscan(scan);
		UnregisterSnapshot(snapshot);
		table_close(rel, AccessShareLock);
	}
}

/*
 * tenancy_quota_rows_name() and protected_column_lookup(), through the
 * backend's cache.
 */
static void
relation_counting(Oid relid, char *out, NameData *column)
{
	static bool callbacks_registered = false;
	ResourceName *rn;
	bool		found;

	if (!callbacks_registered)
	{
		CacheRegisterRelcacheCallback(resource_names_reset, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, resource_names_syscache_reset, (Datum) 0);
		callbacks_registered = true;
	}
	if (resource_names == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(ResourceName);
		ctl.hcxt = TopMemoryContext;
		resource_names = hash_create("tenancy resource names", 64, &ctl,
									 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	rn = hash_search(resource_names, &relid, HASH_FIND, &found);
	if (!found)
	{
		char		name[TENANCY_RESOURCE_LEN];
		NameData	col;

		/* the look-ups may process invalidations: enter afterwards */
		tenancy_quota_rows_name(relid, name);
		protected_column_lookup(relid, &col);
		if (resource_names == NULL)
		{
			memcpy(out, name, TENANCY_RESOURCE_LEN);
			*column = col;
			return;
		}
		rn = hash_search(resource_names, &relid, HASH_ENTER, &found);
		memcpy(rn->rows_resource, name, TENANCY_RESOURCE_LEN);
		rn->protected_column = col;
	}
	memcpy(out, rn->rows_resource, TENANCY_RESOURCE_LEN);
	*column = rn->protected_column;
}

/*
 * Does this trigger count for tenancy?  Only its own triggers on the
 * tables it protects do: tenancy._quota_count() may be attached by anyone
 * to any table (PostgreSQL checks EXECUTE when it clones a trigger onto a
 * partition, so PUBLIC has it), and such a trigger must not change any
 * tenant's usage.  A trigger by another name on a protected table is
 * refused as well (the DDL guards keep tenancy_* names to tenancy).
 */
static void
require_own_trigger(Trigger *trigger, const char *expected, Oid relid,
					const NameData *column, const char *argument)
{
	if (strcmp(trigger->tgname, expected) != 0 || NameStr(*column)[0] == '\0' ||
		(argument != NULL && strcmp(NameStr(*column), argument) != 0))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenancy: trigger \"%s\" on table \"%s\" may not count quota usage",
						trigger->tgname, get_rel_name(relid)),
				 errdetail("Only the trigger %s that tenancy.protect() creates counts usage, on the tables listed in tenancy.protected_tables.",
						   expected),
				 errhint("Drop the trigger; protect the table with tenancy.protect() to have its rows counted.")));
}

/*
 * The stored size of a row's values, as pg_column_size() reports each:
 * a varlena at its stored size (compressed or out of line: the size of
 * what is stored), a cstring with its terminator, others their length.
 */
static int64
row_storage(HeapTuple tuple, TupleDesc desc, Datum *values, bool *nulls)
{
	int64		size = 0;

	heap_deform_tuple(tuple, desc, values, nulls);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (nulls[i] || att->attisdropped)
			continue;
		if (att->attlen > 0)
			size += att->attlen;
		else if (att->attlen == -1)
			size += toast_datum_size(values[i]);
		else
			size += strlen(DatumGetCString(values[i])) + 1;
	}
	return size;
}

static CountState *
count_state(FunctionCallInfo fcinfo, Relation rel, Trigger *trigger)
{
	CountState *st = (CountState *) fcinfo->flinfo->fn_extra;
	TupleDesc	desc = RelationGetDescr(rel);
	const char *column = trigger->tgargs[0];

	if (st == NULL || st->relid != RelationGetRelid(rel))
	{
		NameData	col;

		st = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(CountState));
		st->relid = RelationGetRelid(rel);
		st->tenant_attno = SPI_fnumber(desc, column);
		if (st->tenant_attno <= 0)
			elog(ERROR, "tenancy: tenant column \"%s\" not found", column);
		relation_counting(st->relid, st->rows_resource, &col);
		require_own_trigger(trigger, "tenancy_quota", st->relid, &col, column);
		snprintf(st->inserted_resource, sizeof(st->inserted_resource),
				 "rows_inserted:%s", st->rows_resource + 5);
		snprintf(st->deleted_resource, sizeof(st->deleted_resource),
				 "rows_deleted:%s", st->rows_resource + 5);
		st->values = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(Datum) * Max(desc->natts, 1));
		st->nulls = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(bool) * Max(desc->natts, 1));
		fcinfo->flinfo->fn_extra = st;
	}
	return st;
}

/*
 * Add a row's deltas (sign +1 or -1) to its tenant's counters.  enforce:
 * a row being written (checked against the limits, and metered as
 * rows_inserted:<table> / rows_deleted:<table>), not one found in place.
 */
static void
count_row(CountState *st, HeapTuple tuple, TupleDesc desc, int sign,
		  bool enforce)
{
	int64		size = row_storage(tuple, desc, st->values, st->nulls);
	pg_uuid_t  *tenant;

	if (st->nulls[st->tenant_attno - 1])
		return;					/* NOT NULL: cannot happen */
	tenant = DatumGetUUIDP(st->values[st->tenant_attno - 1]);
	tenancy_quota_add_cached(&st->rows_cache, tenant, st->rows_resource,
							 st->relid, sign, enforce);
	tenancy_quota_add_cached(&st->storage_cache, tenant, "storage_bytes",
							 st->relid, sign * size, enforce);
	if (enforce)
		tenancy_usage_record(tenant, sign > 0 ? st->inserted_resource : st->deleted_resource,
							 1, false);
}

/*
 * Trigger function tenancy._quota_count(tenant_column): AFTER INSERT OR
 * UPDATE OR DELETE FOR EACH ROW on a protected table.
 */
Datum
tenancy_quota_count(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	CountState *st;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._quota_count() was not called by the trigger manager")));
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._quota_count() must be fired AFTER, FOR EACH ROW")));
	if (trigdata->tg_trigger->tgnargs != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._quota_count() needs the tenant column as its argument")));
	tenancy_shmem_require();

	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	st = count_state(fcinfo, rel, trigdata->tg_trigger);

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		count_row(st, trigdata->tg_trigtuple, desc, 1, true);
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		count_row(st, trigdata->tg_trigtuple, desc, -1, true);
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		HeapTuple	oldt = trigdata->tg_trigtuple;
		HeapTuple	newt = trigdata->tg_newtuple;
		int64		oldsize = row_storage(oldt, desc, st->values, st->nulls);
		pg_uuid_t	oldtenant;
		int64		newsize;

		memcpy(&oldtenant, DatumGetUUIDP(st->values[st->tenant_attno - 1]), sizeof(pg_uuid_t));
		newsize = row_storage(newt, desc, st->values, st->nulls);
		if (memcmp(&oldtenant, DatumGetUUIDP(st->values[st->tenant_attno - 1]), sizeof(pg_uuid_t)) == 0)
			tenancy_quota_add_cached(&st->storage_cache, &oldtenant, "storage_bytes",
									 st->relid, newsize - oldsize, true);
		else
		{
			/* a row moved to another tenant (only roles bypassing RLS) */
			count_row(st, oldt, desc, -1, true);
			count_row(st, newt, desc, 1, true);
		}
	}
	return PointerGetDatum(NULL);
}

/*
 * Trigger function tenancy._quota_truncate(): AFTER TRUNCATE on a
 * protected table.  TRUNCATE holds an ACCESS EXCLUSIVE lock, so no other
 * transaction has deltas on the table in flight.
 */
Datum
tenancy_quota_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._quota_truncate() must be fired by TRUNCATE")));
	if (trigdata->tg_relation->rd_rel->relkind == RELKIND_RELATION)
	{
		Oid			relid = RelationGetRelid(trigdata->tg_relation);
		char		resource[TENANCY_RESOURCE_LEN];
		NameData	col;

		relation_counting(relid, resource, &col);
		require_own_trigger(trigdata->tg_trigger, "tenancy_quota_truncate", relid, &col, NULL);
		tenancy_quota_forget_relation(relid);
	}
	return PointerGetDatum(NULL);
}

/*
 * SQL: tenancy._quota_adopt(tbl regclass, col name).  Called when a table
 * becomes protected: its share of usage becomes what it holds now (rows
 * already there count, without a limit check: they exist).  protect()
 * holds an ACCESS EXCLUSIVE lock on the table.
 */
Datum
tenancy_quota_adopt(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *column = NameStr(*PG_GETARG_NAME(1));
	Relation	rel;
	TupleDesc	desc;
	TableScanDesc scan;
	HeapTuple	tuple;
	Snapshot	snapshot;
	CountState	st;

	tenancy_shmem_require();
	if (get_rel_relkind(relid) != RELKIND_RELATION)
		PG_RETURN_VOID();
	tenancy_quota_forget_relation(relid);

	rel = table_open(relid, AccessShareLock);
	desc = RelationGetDescr(rel);
	memset(&st, 0, sizeof(st));
	st.relid = relid;
	st.tenant_attno = SPI_fnumber(desc, column);
	if (st.tenant_attno <= 0)
		elog(ERROR, "tenancy: tenant column \"%s\" not found", column);
	tenancy_quota_rows_name(relid, st.rows_resource);
	st.values = palloc(sizeof(Datum) * Max(desc->natts, 1));
	st.nulls = palloc(sizeof(bool) * Max(desc->natts, 1));

	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		CHECK_FOR_INTERRUPTS();
		count_row(&st, tuple, desc, 1, false);
	}
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	PG_RETURN_VOID();
}

/*
 * SQL: tenancy._quota_forget(tbl oid).  A dropped or unprotected table's
 * share of usage is given back (called by the sql_drop event trigger).
 */
Datum
tenancy_quota_forget(PG_FUNCTION_ARGS)
{
	tenancy_quota_forget_relation(PG_GETARG_OID(0));
	PG_RETURN_VOID();
}
