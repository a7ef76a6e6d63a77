/*-------------------------------------------------------------------------
 *
 * refs.c
 *		References between tenancy's own tables (a tenant's plan, the
 *		tenant of a key, quota or rate limit, the plan of a plan's quota or
 *		rate limit), kept by triggers instead of foreign keys.
 *
 * Why not foreign keys: the tables are configuration tables of the
 * extension, whose data pg_dump dumps as TABLE DATA items that name only
 * their own table; pg_restore -j loads them in any order, in separate
 * transactions, and a foreign key refuses api_keys before tenants (or
 * tenants before plans) is loaded, losing that table's data.
 *
 * The triggers do what the foreign keys did, with the same locks and
 * snapshots as core's RI triggers (src/backend/utils/adt/ri_triggers.c):
 *	- tenancy._ref_check(): AFTER INSERT OR UPDATE OF <column> FOR EACH ROW
 *	  on the referencing table; the referenced row must exist, and is
 *	  locked FOR KEY SHARE, so that deleting it or changing its key waits
 *	  for this transaction (and then cascades to the new row, or fails).
 *	  Skipped when the key did not change, and while a restore loads the
 *	  table (below).
 *	- tenancy._ref_cascade(): AFTER UPDATE OF <key> OR DELETE FOR EACH ROW
 *	  on the referenced table; per referencing table, the new key is
 *	  carried over (cascade) or the change refused while rows refer to
 *	  the old key (no action), and the referencing rows are deleted
 *	  (cascade) or the delete refused (no action).  Under REPEATABLE READ
 *	  and SERIALIZABLE it reads the latest committed rows and fails with a
 *	  serialization error where its transaction's snapshot would miss one,
 *	  as core does.
 *	- tenancy._ref_truncate(): AFTER TRUNCATE on the referenced table;
 *	  refuses to leave referencing rows behind (truncate them together).
 *	Tables are named without their schema: they are tenancy's.  Every
 *	query runs as the owner of the table it reads or writes, with row
 *	level security not forced, in a security-restricted context.
 *
 * A restore is recognised thus: the statement at the top level is a COPY
 * FROM into the very table the trigger fires on, or an INSERT into it
 * with row_security off, by a superuser.  That is what pg_restore and psql
 * replaying a dump do: dumps load rows with COPY, or with INSERT after
 * "SET row_security = off" (pg_dump --inserts), and the extension can only
 * be created by a superuser, so its tables are restored by one.  tenancy's
 * functions never COPY and insert from inside a function (not at the top
 * level), and a COPY (query) TO that calls them is a COPY TO.
 * doc/tenancy-concepts.md says what that leaves to a superuser who loads
 * the tables by hand.  tenancy_top_level_write(), which tells how the
 * top-level statement writes a table, also serves quota.c (a ledger
 * loaded by a restore).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "parser/parsetree.h"
#include "storage/lmgr.h"
#include "tcop/pquery.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_ref_check);
PG_FUNCTION_INFO_V1(tenancy_ref_cascade);
PG_FUNCTION_INFO_V1(tenancy_ref_truncate);

/* Raise the trigger protocol error of this file. */
static void
protocol_error(const char *fn, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
			 errmsg("tenancy: %s %s", fn, what)));
}

/* Is the relation range var names rel? */
static bool
names_rel(RangeVar *rv, Oid relid)
{
	return rv != NULL && RangeVarGetRelid(rv, NoLock, true) == relid;
}

/*
 * How the statement at the top level (that of the active portal) writes
 * relid directly, not through a function or a trigger: by COPY FROM, by an
 * INSERT, by an UPDATE, DELETE or MERGE, or by TRUNCATE; or not at all.
 */
TenancyTopWrite
tenancy_top_level_write(Oid relid)
{
	ListCell   *lc;

	if (ActivePortal == NULL)
		return TENANCY_TOP_NONE;
	foreach(lc, ActivePortal->stmts)
	{
		PlannedStmt *ps = lfirst_node(PlannedStmt, lc);

		if (ps->commandType == CMD_UTILITY && ps->utilityStmt != NULL)
		{
			if (IsA(ps->utilityStmt, CopyStmt))
			{
				CopyStmt   *copy = (CopyStmt *) ps->utilityStmt;

				if (copy->is_from && names_rel(copy->relation, relid))
					return TENANCY_TOP_COPY;
			}
			else if (IsA(ps->utilityStmt, TruncateStmt))
			{
				ListCell   *rc;

				foreach(rc, ((TruncateStmt *) ps->utilityStmt)->relations)
					if (names_rel(lfirst_node(RangeVar, rc), relid))
						return TENANCY_TOP_TRUNCATE;
			}
		}
		else if (ps->resultRelations != NIL &&
				 rt_fetch(linitial_int(ps->resultRelations), ps->rtable)->relid == relid)
			return ps->commandType == CMD_INSERT ? TENANCY_TOP_INSERT : TENANCY_TOP_MODIFY;
	}
	return TENANCY_TOP_NONE;
}

/*
 * Is a restore loading rel?  A superuser runs, at the top level, a COPY
 * FROM into rel, or an INSERT into rel with row_security off (see the file
 * header).
 */
static bool
restore_loading(Relation rel)
{
	TenancyTopWrite how;

	if (!superuser())
		return false;
	how = tenancy_top_level_write(RelationGetRelid(rel));
	return how == TENANCY_TOP_COPY || (how == TENANCY_TOP_INSERT && !row_security);
}

/* A table of schema tenancy named by a trigger argument, locked as asked. */
static Oid
table_arg(const char *name, LOCKMODE mode)
{
	Oid			relid = tenancy_relation_oid(name, false);

	if (mode != NoLock)
		LockRelationOid(relid, mode);
	return relid;
}

/* The attribute number of a column named by a trigger argument. */
static AttrNumber
column_arg(Oid relid, const char *column)
{
	AttrNumber	attno = get_attnum(relid, column);

	if (attno == InvalidAttrNumber)
		elog(ERROR, "tenancy: column \"%s\" of %s does not exist", column,
			 get_rel_name(relid));
	return attno;
}

/* "schema.table", quoted as need be. */
static char *
qualified(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

/* The text form of a key value, for messages. */
static char *
value_text(Datum value, Oid type)
{
	Oid			out;
	bool		varlena;

	getTypeOutputInfo(type, &out, &varlena);
	return OidOutputFunctionCall(out, value);
}

/*
 * Run sql (parameters of the types given) as the owner of relid, as core's RI
 * triggers do.  With detect_new, under REPEATABLE READ or SERIALIZABLE,
 * the query reads the latest committed rows and fails where the
 * transaction's snapshot would not see a row it touches.  Returns the SPI
 * result; SPI_processed says how many rows.
 */
static int
run_as_owner(Oid relid, const char *sql, int nargs, Oid *types, Datum *values,
			 bool detect_new, long limit)
{
	SPIPlanPtr	plan;
	Snapshot	test = InvalidSnapshot;
	Snapshot	cross = InvalidSnapshot;
	Oid			save_user;
	int			save_sec;
	int			rc;

	plan = SPI_prepare(sql, nargs, types);
	if (plan == NULL)
		elog(ERROR, "tenancy: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	if (detect_new && IsolationUsesXactSnapshot())
	{
		CommandCounterIncrement();
		test = GetLatestSnapshot();
		cross = GetTransactionSnapshot();
	}
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(tenancy_relation_owner(relid, false),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	rc = SPI_execute_snapshot(plan, values, NULL, test, cross, false, true, limit);
	SetUserIdAndSecContext(save_user, save_sec);
	if (rc < 0)
		elog(ERROR, "tenancy: internal query failed: %s", SPI_result_code_string(rc));
	return rc;
}

/*
 * Trigger function tenancy._ref_check(column, referenced table, its
 * column): AFTER INSERT OR UPDATE OF column FOR EACH ROW.  The new row's
 * column must name a row of the referenced table, which is locked FOR KEY
 * SHARE until the transaction ends.  23503 otherwise.
 */
Datum
tenancy_ref_check(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	Relation	rel;
	TupleDesc	desc;
	HeapTuple	newtuple;
	AttrNumber	attno;
	Oid			parent;
	Oid			type;
	Datum		value;
	bool		isnull;
	char	   *sql;
	int			rc;

	if (!CALLED_AS_TRIGGER(fcinfo))
		protocol_error("tenancy._ref_check()", "was not called by the trigger manager");
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		protocol_error("tenancy._ref_check()", "must be fired AFTER ... FOR EACH ROW");
	if (!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) && !TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		protocol_error("tenancy._ref_check()", "must be fired by INSERT or UPDATE");
	trigger = trigdata->tg_trigger;
	if (trigger->tgnargs != 3)
		protocol_error("tenancy._ref_check()", "takes a column, a table and its column");

	rel = trigdata->tg_relation;
	if (restore_loading(rel))
		return PointerGetDatum(NULL);
	desc = RelationGetDescr(rel);
	attno = column_arg(RelationGetRelid(rel), trigger->tgargs[0]);
	type = TupleDescAttr(desc, attno - 1)->atttypid;
	newtuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple
		: trigdata->tg_trigtuple;
	value = heap_getattr(newtuple, attno, desc, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		bool		oldnull;
		Datum		old = heap_getattr(trigdata->tg_trigtuple, attno, desc, &oldnull);
		Form_pg_attribute att = TupleDescAttr(desc, attno - 1);

		if (!oldnull && datumIsEqual(old, value, att->attbyval, att->attlen))
			return PointerGetDatum(NULL);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tenancy: SPI_connect failed");
	parent = table_arg(trigger->tgargs[1], RowShareLock);
	(void) column_arg(parent, trigger->tgargs[2]);
	sql = psprintf("SELECT 1 FROM ONLY %s x WHERE %s OPERATOR(pg_catalog.=) $1 FOR KEY SHARE OF x",
				   qualified(parent), quote_identifier(trigger->tgargs[2]));
	rc = run_as_owner(parent, sql, 1, &type, &value, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "tenancy: internal query failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("tenancy: %s.%s refers to a row of %s that does not exist",
						qualified(RelationGetRelid(rel)), trigger->tgargs[0], qualified(parent)),
				 errdetail("Key (%s)=(%s) is not present in table %s.",
						   trigger->tgargs[2], value_text(value, type), qualified(parent)),
				 errhint("Refer to an existing row of %s.", qualified(parent))));
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * Trigger function tenancy._ref_cascade(key column, then for each
 * referencing table: table, column, on update, on delete), with on update
 * and on delete 'cascade' or 'no action': AFTER UPDATE OF key OR DELETE
 * FOR EACH ROW on the referenced table.
 */
Datum
tenancy_ref_cascade(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	Relation	rel;
	TupleDesc	desc;
	AttrNumber	attno;
	Oid			type;
	Datum		values[2];
	bool		isnull;
	bool		is_update;

	if (!CALLED_AS_TRIGGER(fcinfo))
		protocol_error("tenancy._ref_cascade()", "was not called by the trigger manager");
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		protocol_error("tenancy._ref_cascade()", "must be fired AFTER ... FOR EACH ROW");
	if (!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) && !TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		protocol_error("tenancy._ref_cascade()", "must be fired by UPDATE or DELETE");
	trigger = trigdata->tg_trigger;
	if (trigger->tgnargs < 5 || (trigger->tgnargs - 1) % 4 != 0)
		protocol_error("tenancy._ref_cascade()",
					   "takes a column, then a table, a column, an update and a delete action per referencing table");

	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	attno = column_arg(RelationGetRelid(rel), trigger->tgargs[0]);
	type = TupleDescAttr(desc, attno - 1)->atttypid;
	is_update = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	values[1] = heap_getattr(trigdata->tg_trigtuple, attno, desc, &isnull);	/* old key */
	if (isnull)
		return PointerGetDatum(NULL);
	if (is_update)
	{
		Form_pg_attribute att = TupleDescAttr(desc, attno - 1);

		values[0] = heap_getattr(trigdata->tg_newtuple, attno, desc, &isnull);
		if (!isnull && datumIsEqual(values[0], values[1], att->attbyval, att->attlen))
			return PointerGetDatum(NULL);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tenancy: SPI_connect failed");
	for (int i = 1; i < trigger->tgnargs; i += 4)
	{
		Oid			child = table_arg(trigger->tgargs[i], RowExclusiveLock);
		const char *column;
		const char *action = trigger->tgargs[is_update ? i + 2 : i + 3];
		Oid			types[2] = {type, type};
		char	   *sql;
		int			rc;

		(void) column_arg(child, trigger->tgargs[i + 1]);
		column = quote_identifier(trigger->tgargs[i + 1]);
		if (strcmp(action, "cascade") == 0)
		{
			if (is_update)
			{
				sql = psprintf("UPDATE ONLY %s SET %s = $1 WHERE %s OPERATOR(pg_catalog.=) $2",
							   qualified(child), column, column);
				rc = run_as_owner(child, sql, 2, types, values, true, 0);
			}
			else
			{
				sql = psprintf("DELETE FROM ONLY %s WHERE %s OPERATOR(pg_catalog.=) $1",
							   qualified(child), column);
				rc = run_as_owner(child, sql, 1, types, &values[1], true, 0);
			}
			if (rc != SPI_OK_UPDATE && rc != SPI_OK_DELETE)
				elog(ERROR, "tenancy: internal query failed: %s", SPI_result_code_string(rc));
		}
		else if (strcmp(action, "no action") == 0)
		{
			sql = psprintf("SELECT 1 FROM ONLY %s x WHERE %s OPERATOR(pg_catalog.=) $1 FOR KEY SHARE OF x",
						   qualified(child), column);
			rc = run_as_owner(child, sql, 1, types, &values[1], true, 1);
			if (rc != SPI_OK_SELECT)
				elog(ERROR, "tenancy: internal query failed: %s", SPI_result_code_string(rc));
			if (SPI_processed > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("tenancy: cannot %s a row of %s that %s refers to",
								is_update ? "change the key of" : "delete",
								qualified(RelationGetRelid(rel)), qualified(child)),
						 errdetail("Key (%s)=(%s) is still referenced from table %s.",
								   trigger->tgargs[0], value_text(values[1], type), qualified(child)),
						 errhint("Change or delete the rows of %s that refer to it first.",
								 qualified(child))));
		}
		else
			protocol_error("tenancy._ref_cascade()", "knows only the actions cascade and no action");
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * Trigger function tenancy._ref_truncate(referencing tables...): AFTER
 * TRUNCATE FOR EACH STATEMENT on a referenced table.  Refuses (23503) when
 * a referencing table still has rows: they would refer to nothing.
 * Tables truncated by the same command are empty by now.
 */
Datum
tenancy_ref_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;

	if (!CALLED_AS_TRIGGER(fcinfo))
		protocol_error("tenancy._ref_truncate()", "was not called by the trigger manager");
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) || !TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		protocol_error("tenancy._ref_truncate()", "must be fired AFTER TRUNCATE");
	trigger = trigdata->tg_trigger;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tenancy: SPI_connect failed");
	for (int i = 0; i < trigger->tgnargs; i++)
	{
		Oid			child = table_arg(trigger->tgargs[i], AccessShareLock);
		int			rc;

		rc = run_as_owner(child, psprintf("SELECT 1 FROM ONLY %s", qualified(child)),
						  0, NULL, NULL, true, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "tenancy: internal query failed: %s", SPI_result_code_string(rc));
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
					 errmsg("tenancy: cannot truncate %s while %s refers to it",
							qualified(RelationGetRelid(trigdata->tg_relation)), qualified(child)),
					 errdetail("Table %s has rows.", qualified(child)),
					 errhint("Truncate %s in the same command.", qualified(child))));
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}
