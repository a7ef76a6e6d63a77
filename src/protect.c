/*-------------------------------------------------------------------------
 *
 * protect.c
 *		The C side of protected tables: the row guard trigger, the
 *		TRUNCATE guard, and the switch that lets tenancy.protect() and
 *		tenancy.unprotect() pass the DDL guard.
 *
 * The isolation itself is row level security, set up by protect() in the
 * install script.  The row guard runs before the RLS check of INSERT and
 * UPDATE so that a row of another tenant is refused with tenancy's own
 * message; RLS's WITH CHECK stays behind it.
 *
 * Also here: the ddl_command_start half of the DDL guard (commands that
 * core would refuse with its own, less helpful error, such as dropping a
 * column a policy uses, are refused first with 42501), and
 * tenancy._exec_as_owner(), which runs the statements protect() and
 * purge_tenant() issue against a user's table as that table's owner, so
 * that the owner's triggers never run with the extension owner's rights.
 * The ddl_command_start guard also notes the rows:<table> names of the
 * protected tables a rename may change, for ddl_command_end to move their
 * usage and limits (tenancy._ddl_follow_renames()).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_row_guard);
PG_FUNCTION_INFO_V1(tenancy_truncate_guard);
PG_FUNCTION_INFO_V1(tenancy_ddl_bypass);
PG_FUNCTION_INFO_V1(tenancy_exec_as_owner);
PG_FUNCTION_INFO_V1(tenancy_ddl_command_start);
PG_FUNCTION_INFO_V1(tenancy_ddl_prior_problems);
PG_FUNCTION_INFO_V1(tenancy_ddl_recount);
PG_FUNCTION_INFO_V1(tenancy_ddl_prior_listed);
PG_FUNCTION_INFO_V1(tenancy_ddl_follow_renames);

/* Set by protect()/unprotect() for the DDL they run; reset on any abort. */
static bool ddl_bypass = false;
static emit_log_hook_type prev_emit_log_hook = NULL;

/*
 * The protected tables that were already not intact when a guarded DDL
 * command started (a restore in progress, say, has not yet enabled row
 * level security on the tables it lists), as the text of an oid[].  The
 * state check at ddl_command_end refuses only what the command itself
 * weakened.  Also every protected table (only those are judged at the end)
 * and the tables whose usage ddl_command_end counts again.  A stack,
 * because DDL can run inside DDL; entries remember their subtransaction so
 * that an aborted one takes its entries with it.
 * Lives in TopTransactionContext.
 */
typedef struct PriorProblems
{
	SubTransactionId subid;
	char	   *relids;
	char	   *recount;		/* tables whose usage is counted again at the
								 * end (attached to a protected table, or
								 * columns added, dropped or retyped), as an
								 * oid[] literal */
	char	   *listed;			/* every protected table, as an oid[] literal */
	List	   *renamed;		/* of RenamedTable: tables whose rows:<table>
								 * name the command may change */
} PriorProblems;

/* A protected table's rows:<table> name before a command that renames. */
typedef struct RenamedTable
{
	Oid			relid;
	char		name[TENANCY_RESOURCE_LEN];
} RenamedTable;

static List *prior_problems = NIL;

/* Whether the current user bypasses RLS, cached per transaction. */
static LocalTransactionId bypass_lxid = InvalidLocalTransactionId;
static Oid	bypass_user = InvalidOid;
static bool bypass_rls = false;

static void
protect_xact_callback(XactEvent event, void *arg)
{
	ddl_bypass = false;
	prior_problems = NIL;		/* its memory goes with the transaction */
}

static void
protect_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		ddl_bypass = false;
		while (prior_problems != NIL &&
			   ((PriorProblems *) linitial(prior_problems))->subid >= mySubid)
			prior_problems = list_delete_first(prior_problems);
	}
}

/*
 * emit_log_hook: when PostgreSQL's own row level security check refuses a
 * row because of a protected table's isolation policy (the WITH CHECK of a
 * row the row guard did not see, or the USING check of INSERT ... ON
 * CONFLICT DO UPDATE and MERGE on another tenant's row), the message gets
 * the "tenancy: " prefix and a HINT, like every other refusal of tenancy.
 * The message is matched on its untranslated form; the SQLSTATE (42501)
 * is PostgreSQL's.
 */
static void
tenancy_rls_emit_log(ErrorData *edata)
{
	if (edata->elevel >= ERROR &&
		edata->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE &&
		edata->message_id != NULL && edata->message != NULL &&
		strstr(edata->message_id, "row violates row-level security policy \"%s\"") != NULL &&
		strstr(edata->message, "\"tenancy_isolation\"") != NULL &&
		strncmp(edata->message, "tenancy: ", 9) != 0)
	{
		bool		using_check = strstr(edata->message_id, "(USING expression)") != NULL;

		edata->message = psprintf("tenancy: %s", edata->message);
		if (edata->detail == NULL)
			edata->detail = pstrdup(using_check ?
									"The row to update or delete belongs to another tenant." :
									"A protected table takes only rows of the session's tenant.");
		if (edata->hint == NULL)
			edata->hint = pstrdup(using_check ?
								  "Rows of other tenants cannot be changed from this session." :
								  "Omit the tenant column: it defaults to tenancy.current_tenant_id().");
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
tenancy_protect_init(void)
{
	RegisterXactCallback(protect_xact_callback, NULL);
	RegisterSubXactCallback(protect_subxact_callback, NULL);
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = tenancy_rls_emit_log;
}

/*
 * Does the current user bypass row level security (superuser or
 * BYPASSRLS)?  Such roles are not subject to isolation, so the row guard
 * lets them write any tenant's rows, as RLS does.  Cached per transaction
 * and user: no catalog lookup per row.
 */
static bool
current_user_bypasses_rls(void)
{
	Oid			userid = GetUserId();

	if (bypass_lxid != MyProc->lxid || bypass_user != userid)
	{
		bypass_rls = superuser_arg(userid) || has_bypassrls_privilege(userid);
		bypass_user = userid;
		bypass_lxid = MyProc->lxid;
	}
	return bypass_rls;
}

/*
 * The tcn preamble: a row-level BEFORE trigger with one argument, the name
 * of the tenant column.
 */
static void
check_row_guard_call(FunctionCallInfo fcinfo, const char *name)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: %s was not called by the trigger manager", name)));
	if (!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: %s must be fired BEFORE, FOR EACH ROW", name)));
	if (trigdata->tg_trigger->tgnargs != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: %s needs the tenant column as its argument", name)));
}

/*
 * Trigger function tenancy._row_guard(): BEFORE INSERT OR UPDATE FOR EACH
 * ROW on a protected table.  Refuses a new row whose tenant column is not
 * the context tenant (42501), and raises TN001 without a context.
 */
Datum
tenancy_row_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	newtuple;
	TupleDesc	desc;
	int			attno;
	bool		isnull;
	Datum		value;

	check_row_guard_call(fcinfo, "tenancy._row_guard()");
	newtuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;

	if (current_user_bypasses_rls())
		return PointerGetDatum(newtuple);

	desc = RelationGetDescr(trigdata->tg_relation);
	attno = SPI_fnumber(desc, trigdata->tg_trigger->tgargs[0]);
	if (attno <= 0)
		elog(ERROR, "tenancy: tenant column \"%s\" not found",
			 trigdata->tg_trigger->tgargs[0]);
	value = heap_getattr(newtuple, attno, desc, &isnull);

	/* Without a context this raises TN001, as every access does. */
	{
		const pg_uuid_t *tenant = tenancy_context_current();

		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("tenancy: new row has no tenant"),
					 errdetail("Column \"%s\" of a row written to \"%s\" is NULL.",
							   trigdata->tg_trigger->tgargs[0],
							   RelationGetRelationName(trigdata->tg_relation)),
					 errhint("Omit the column: it defaults to tenancy.current_tenant_id().")));
		if (memcmp(DatumGetUUIDP(value)->data, tenant->data, UUID_LEN) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("tenancy: new row belongs to another tenant"),
					 errdetail("Column \"%s\" of a row written to \"%s\" is not the tenant of this session.",
							   trigdata->tg_trigger->tgargs[0],
							   RelationGetRelationName(trigdata->tg_relation)),
					 errhint("Omit the column: it defaults to tenancy.current_tenant_id().")));
	}
	return PointerGetDatum(newtuple);
}

/*
 * Trigger function tenancy._truncate_guard(): BEFORE TRUNCATE on a
 * protected table.  TRUNCATE ignores row level security and would empty
 * every tenant's rows, so only administrators may run it.
 */
Datum
tenancy_truncate_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._truncate_guard() must be fired by TRUNCATE")));
	if (!tenancy_context_is_admin())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenancy: permission denied to truncate a protected table"),
				 errdetail("TRUNCATE of \"%s\" would remove the rows of every tenant.",
						   RelationGetRelationName(trigdata->tg_relation)),
				 errhint("DELETE the rows of your tenant instead, or ask a member of tenancy_admin.")));
	return PointerGetDatum(NULL);
}

/*
 * SQL: tenancy._ddl_bypass(on boolean) RETURNS boolean.  Lets the DDL of
 * protect()/unprotect() pass the guard; returns the previous state.
 * EXECUTE is revoked from PUBLIC; the flag is cleared at the end of the
 * transaction and on the abort of any subtransaction, so a failed protect
 * inside a savepoint cannot leave it on.
 */
Datum
tenancy_ddl_bypass(PG_FUNCTION_ARGS)
{
	bool		previous = ddl_bypass;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(previous);	/* just ask */
	ddl_bypass = PG_GETARG_BOOL(0);
	PG_RETURN_BOOL(previous);
}

/*
 * SQL: tenancy._exec_as_owner(tbl regclass, query text, tenant uuid)
 * RETURNS bigint.  Runs query (with $1 = tenant) as the owner of tbl, in a
 * security-restricted operation, not subject to FORCE ROW LEVEL SECURITY,
 * with the DDL bypass off and setting changes undone afterwards; returns
 * the number of rows processed.
 *
 * protect() (the backfill UPDATE) and purge_tenant() (the DELETEs) are
 * SECURITY DEFINER functions owned by a superuser.  Run directly, a
 * statement on a user's table would fire that user's triggers, CHECK
 * constraints and index expressions with superuser rights.  Run here, they
 * get no more than the table owner has, as CREATE INDEX and REFRESH
 * MATERIALIZED VIEW do.  SECURITY_NOFORCE_RLS (as in the referential
 * integrity triggers) lets the owner reach every tenant's rows, which
 * these two statements need.  EXECUTE is not granted to anyone.
 */
Datum
tenancy_exec_as_owner(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *query;
	Oid			owner;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	bool		save_bypass = ddl_bypass;
	Oid			argtypes[1] = {UUIDOID};
	Datum		values[1];
	char		nulls[1] = {' '};
	int			ret;
	uint64		processed;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		elog(ERROR, "tenancy: _exec_as_owner needs a table and a query");
	relid = PG_GETARG_OID(0);
	query = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (PG_ARGISNULL(2))
	{
		values[0] = (Datum) 0;
		nulls[0] = 'n';
	}
	else
		values[0] = PG_GETARG_DATUM(2);

	owner = tenancy_relation_owner(relid, false);

	/* An error aborts the (sub)transaction, which restores all of this. */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION | SECURITY_NOFORCE_RLS);
	save_nestlevel = NewGUCNestLevel();
	ddl_bypass = false;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tenancy: SPI_connect failed");
	ret = SPI_execute_with_args(query, 1, argtypes, values, nulls, false, 0);
	if (ret < 0)
		elog(ERROR, "tenancy: SPI_execute_with_args returned %s", SPI_result_code_string(ret));
	processed = SPI_processed;
	SPI_finish();

	ddl_bypass = save_bypass;
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);

	PG_RETURN_INT64((int64) processed);
}

/*
 * The tenant column of a protected table, or NULL when relid is not
 * protected.  Reads tenancy.protected_tables through SPI; the caller is
 * connected.
 */
static char *
protected_column(Oid relid)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1];
	int			ret;

	values[0] = ObjectIdGetDatum(relid);
	ret = SPI_execute_with_args("SELECT p.tenant_column::pg_catalog.text FROM tenancy.protected_tables p "
								"WHERE p.relid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
								1, argtypes, values, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "tenancy: reading tenancy.protected_tables failed: %s",
			 SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * Raise the 42501 of a command that would weaken a protected table, naming
 * it as the state check at ddl_command_end does (schema-qualified).
 */
static void
refuse_weakening(Oid relid, const char *what)
{
	const char *name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												  get_rel_name(relid));

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("tenancy: %s is protected", name),
			 errdetail("This command would weaken the isolation of %s: %s.", name, what),
			 errhint("A member of tenancy_admin can call tenancy.unprotect() first.")));
}

/*
 * The relation a command names and, unless it says ONLY, its inheritance
 * descendants (the relations ALTER TABLE recurses to).  Empty when the
 * relation does not exist: core reports that.
 */
static List *
command_relations(RangeVar *rv)
{
	Oid			relid;

	if (rv == NULL)
		return NIL;
	relid = RangeVarGetRelid(rv, NoLock, true);
	if (!OidIsValid(relid))
		return NIL;
	if (!rv->inh)
		return list_make1_oid(relid);
	return find_all_inheritors(relid, NoLock, NULL);
}

/*
 * Refuse if column colname is the tenant column of rv or a descendant:
 * what happens to it, a phrase such as "would be dropped".
 */
static void
check_tenant_column(RangeVar *rv, const char *colname, const char *what)
{
	ListCell   *lc;

	if (colname == NULL)
		return;
	foreach(lc, command_relations(rv))
	{
		Oid			relid = lfirst_oid(lc);
		char	   *col = protected_column(relid);

		if (col != NULL && strcmp(col, colname) == 0)
			refuse_weakening(relid, psprintf("tenant column \"%s\" %s", colname, what));
	}
}

/* Refuse if rv or a descendant is protected. */
static void
check_protected_relation(RangeVar *rv, const char *what)
{
	ListCell   *lc;

	foreach(lc, command_relations(rv))
	{
		Oid			relid = lfirst_oid(lc);

		if (protected_column(relid) != NULL)
			refuse_weakening(relid, what);
	}
}

/* Is protected table relid intact (nothing for the end check to refuse)? */
static bool
protected_intact(Oid relid)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1];
	bool		isnull;
	int			ret;

	values[0] = ObjectIdGetDatum(relid);
	ret = SPI_execute_with_args("SELECT NOT EXISTS (SELECT FROM tenancy._protected_problems("
								"ARRAY[$1]::pg_catalog.oid[]))",
								1, argtypes, values, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "tenancy: checking a protected table failed: %s",
			 SPI_result_code_string(ret));
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * CREATE [OR REPLACE] TRIGGER tenancy_*: the names are tenancy's on a
 * protected table.  Replacing tenancy_quota with a trigger of one's own
 * would switch counting off; a new tenancy_* trigger would be taken for
 * tenancy's.  A table that is not intact to begin with (a restore that
 * has not made its triggers yet) is left to the end check.
 */
static void
check_create_trigger(CreateTrigStmt *stmt)
{
	Oid			relid;

	if (stmt->trigname == NULL || strncmp(stmt->trigname, "tenancy_", 8) != 0)
		return;

	/*
	 * The named table only: what a row trigger's cloning does to intact
	 * partitions is judged at the end, and a statement trigger is not
	 * cloned (a parallel restore makes a parent's after its partitions').
	 */
	relid = RangeVarGetRelid(stmt->relation, NoLock, true);
	if (OidIsValid(relid) && protected_column(relid) != NULL && protected_intact(relid))
		refuse_weakening(relid, psprintf("trigger %s would be %s", stmt->trigname,
										 stmt->replace ? "replaced" : "created"));
}

/*
 * ALTER TABLE subcommands that can only weaken a protected table: refused
 * whether or not the table is intact (a restore never issues them, and an
 * unfinished restore must not leave a table open to them).  Dropping or
 * retyping the tenant column is refused here too, before core answers with
 * a dependency error of its own.
 */
static void
check_weakening_subcommand(RangeVar *rv, AlterTableCmd *cmd)
{
	const char *what = NULL;
	bool		ours = cmd->name != NULL && strncmp(cmd->name, "tenancy_", 8) == 0;

	switch (cmd->subtype)
	{
		case AT_DisableRowSecurity:
			what = "row level security would be disabled";
			break;
		case AT_NoForceRowSecurity:
			what = "row level security would no longer be forced";
			break;
		case AT_DisableTrigAll:
		case AT_DisableTrigUser:
		case AT_EnableTrigAll:
		case AT_EnableTrigUser:
			what = "a tenancy trigger would be disabled";
			break;
		case AT_DisableTrig:
		case AT_EnableTrig:
		case AT_EnableReplicaTrig:
			if (ours)
				what = "a tenancy trigger would be disabled";
			break;
		case AT_DropColumn:
			check_tenant_column(rv, cmd->name, "would be dropped");
			break;
		case AT_AlterColumnType:
			check_tenant_column(rv, cmd->name, "would be retyped");
			break;
		case AT_DropNotNull:
			check_tenant_column(rv, cmd->name, "would accept NULL");
			break;
		case AT_SetUnLogged:
			/* not isolation, but exact usage: see _protect_relation() */
			what = "it would become unlogged (crash recovery would empty it behind its quota usage)";
			break;
		default:
			break;
	}
	if (what != NULL)
		check_protected_relation(rv, what);
}

/*
 * ALTER TABLE parent ATTACH PARTITION part, parent protected: PostgreSQL
 * clones the parent's row triggers onto part and fails if part has its
 * own of the same name, as a protected table has (one detached from a
 * protected table, say).  Those go first, so that part is protected
 * through its parent's from now on; its own statement triggers and its
 * policies stay.  Returns the oid of part when it is protected (its usage
 * must be counted for its new root at the end), InvalidOid otherwise.
 * The caller is connected to SPI.
 */
static Oid
prepare_attach(RangeVar *parent_rv, PartitionCmd *pc)
{
	Oid			parent;
	Oid			part;
	char	   *parent_col;
	char	   *part_col;
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1];
	int			ret;
	bool		save_bypass = ddl_bypass;
	const char *part_name;

	if (parent_rv == NULL || pc == NULL || pc->name == NULL)
		return InvalidOid;
	parent = RangeVarGetRelid(parent_rv, NoLock, true);
	part = RangeVarGetRelid(pc->name, NoLock, true);
	if (!OidIsValid(parent) || !OidIsValid(part))
		return InvalidOid;		/* core reports it */
	parent_col = protected_column(parent);
	if (parent_col == NULL)
		return InvalidOid;		/* the end check judges it */
	part_col = protected_column(part);
	part_name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(part)),
										   get_rel_name(part));
	if (part_col != NULL && strcmp(part_col, parent_col) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenancy: %s is protected by another column than the table it would be attached to",
						part_name),
				 errdetail("It is protected by column \"%s\", the partitioned table by column \"%s\".",
						   part_col, parent_col),
				 errhint("Call tenancy.unprotect() on it first; attached, it is protected like its new parent.")));

	values[0] = ObjectIdGetDatum(part);
	ret = SPI_execute_with_args("SELECT t.tgname::pg_catalog.text FROM pg_catalog.pg_trigger t "
								"WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 "
								"AND t.tgparentid OPERATOR(pg_catalog.=) 0 AND NOT t.tgisinternal "
								"AND t.tgname OPERATOR(pg_catalog.=) ANY ('{tenancy_guard,tenancy_quota}'::pg_catalog.name[])",
								1, argtypes, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "tenancy: reading the triggers of %s failed: %s", part_name,
			 SPI_result_code_string(ret));
	if (SPI_processed > 0)
	{
		uint64		n = SPI_processed;
		char	  **names = palloc(sizeof(char *) * n);

		for (uint64 i = 0; i < n; i++)
			names[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		/* An error aborts the (sub)transaction, which clears the bypass. */
		ddl_bypass = true;
		for (uint64 i = 0; i < n; i++)
		{
			ret = SPI_execute(psprintf("DROP TRIGGER %s ON %s", quote_identifier(names[i]), part_name),
							  false, 0);
			if (ret != SPI_OK_UTILITY)
				elog(ERROR, "tenancy: dropping trigger %s of %s failed: %s", names[i], part_name,
					 SPI_result_code_string(ret));
		}
		ddl_bypass = save_bypass;
	}
	return part_col != NULL ? part : InvalidOid;
}

/*
 * The tables whose rows:<table> name a command may change, with that name
 * now, in TopTransactionContext: the roots of the protected tables'
 * partition trees (a protected table that is no partition is its own)
 * that ALTER TABLE ... RENAME TO or SET SCHEMA names, or that live in the
 * schema ALTER SCHEMA ... RENAME TO renames.  Renaming or moving a
 * partition changes nothing: its rows count for its root.  The caller is
 * connected to SPI.
 */
static List *
renamed_tables(Node *parsetree)
{
	Oid			relid = InvalidOid;
	Oid			nsp = InvalidOid;
	List	   *result = NIL;
	int			ret;

	if (IsA(parsetree, RenameStmt))
	{
		RenameStmt *stmt = (RenameStmt *) parsetree;

		if (stmt->renameType == OBJECT_TABLE && stmt->relation != NULL)
			relid = RangeVarGetRelid(stmt->relation, NoLock, true);
		else if (stmt->renameType == OBJECT_SCHEMA && stmt->subname != NULL)
			nsp = get_namespace_oid(stmt->subname, true);
	}
	else if (IsA(parsetree, AlterObjectSchemaStmt))
	{
		AlterObjectSchemaStmt *stmt = (AlterObjectSchemaStmt *) parsetree;

		if (stmt->objectType == OBJECT_TABLE && stmt->relation != NULL)
			relid = RangeVarGetRelid(stmt->relation, NoLock, true);
	}
	if (!OidIsValid(relid) && !OidIsValid(nsp))
		return NIL;

	ret = SPI_execute("SELECT p.relid::pg_catalog.oid FROM tenancy.protected_tables p", true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "tenancy: reading tenancy.protected_tables failed: %s",
			 SPI_result_code_string(ret));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		Oid			root;
		ListCell   *lc;
		bool		seen = false;
		RenamedTable *r;

		if (isnull || get_rel_relkind(DatumGetObjectId(d)) == '\0')
			continue;
		root = tenancy_quota_rows_root(DatumGetObjectId(d));
		if (OidIsValid(relid) ? root != relid : get_rel_namespace(root) != nsp)
			continue;
		foreach(lc, result)
			seen = seen || ((RenamedTable *) lfirst(lc))->relid == root;
		if (seen)
			continue;
		r = MemoryContextAlloc(TopTransactionContext, sizeof(RenamedTable));
		r->relid = root;
		tenancy_quota_rows_name(root, r->name);
		result = lappend(result, r);
	}
	if (result != NIL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);

		result = list_copy(result);
		MemoryContextSwitchTo(oldcxt);
	}
	return result;
}

/*
 * Event trigger function tenancy._on_ddl_command_start(), on
 * ddl_command_start for the same commands as the ddl_command_end guard.
 * Refuses, before core sees them, the commands core would otherwise answer
 * with an error of its own or that leave no trace to check afterwards:
 * dropping, retyping or renaming the tenant column, renaming a tenancy_*
 * trigger or the tenancy_isolation policy, creating or replacing a
 * tenancy_* trigger.  Everything else that weakens a protected table is
 * caught by the state check at ddl_command_end, for which this records
 * which protected tables were not intact to begin with, and the names of
 * the protected tables a rename may change (renamed_tables()).  An ATTACH
 * PARTITION under a protected table is prepared (prepare_attach()), after
 * that record is taken.
 */
Datum
tenancy_ddl_command_start(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	Node	   *parsetree;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._on_ddl_command_start() must be fired by an event trigger")));
	if (ddl_bypass)
		PG_RETURN_VOID();
	trigdata = (EventTriggerData *) fcinfo->context;
	parsetree = trigdata->parsetree;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tenancy: SPI_connect failed");

	if (IsA(parsetree, CreateTrigStmt))
		check_create_trigger((CreateTrigStmt *) parsetree);
	else if (IsA(parsetree, AlterTableStmt))
	{
		AlterTableStmt *stmt = (AlterTableStmt *) parsetree;
		ListCell   *lc;

		foreach(lc, stmt->cmds)
		{
			check_weakening_subcommand(stmt->relation, lfirst_node(AlterTableCmd, lc));
		}
	}
	else if (IsA(parsetree, RenameStmt))
	{
		RenameStmt *stmt = (RenameStmt *) parsetree;

		if (stmt->renameType == OBJECT_COLUMN)
			check_tenant_column(stmt->relation, stmt->subname, "would be renamed");
		else if (stmt->renameType == OBJECT_TRIGGER && stmt->subname != NULL &&
				 strncmp(stmt->subname, "tenancy_", 8) == 0)
			check_protected_relation(stmt->relation,
									 psprintf("trigger %s would be renamed", stmt->subname));
		else if (stmt->renameType == OBJECT_POLICY && stmt->subname != NULL &&
				 strcmp(stmt->subname, "tenancy_isolation") == 0)
			check_protected_relation(stmt->relation,
									 "policy tenancy_isolation would be renamed");
	}

	/*
	 * Remember what was not intact before the command, for the end check.
	 * A new temporary table can weaken nothing: skip the look at every
	 * protected table for it.
	 */
	{
		int			ret = 0;
		char	   *relids = NULL;
		char	   *listed = NULL;
		MemoryContext oldcxt;
		PriorProblems *entry;
		bool		creates_temp = false;

		if (IsA(parsetree, CreateStmt))
			creates_temp = ((CreateStmt *) parsetree)->relation->relpersistence == RELPERSISTENCE_TEMP;
		else if (IsA(parsetree, CreateTableAsStmt))
			creates_temp = ((CreateTableAsStmt *) parsetree)->into->rel->relpersistence == RELPERSISTENCE_TEMP;

		if (!creates_temp)
			ret = SPI_execute("SELECT (SELECT pg_catalog.array_agg(p.relid::pg_catalog.oid)::pg_catalog.text "
							  "          FROM tenancy._protected_problems() p), "
							  "       (SELECT pg_catalog.array_agg(t.relid::pg_catalog.oid)::pg_catalog.text "
							  "          FROM tenancy.protected_tables t)", true, 0);
		if (!creates_temp && ret != SPI_OK_SELECT)
			elog(ERROR, "tenancy: checking protected tables failed: %s",
				 SPI_result_code_string(ret));
		if (!creates_temp && SPI_processed == 1)
		{
			relids = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
			listed = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		}

		oldcxt = MemoryContextSwitchTo(TopTransactionContext);
		entry = palloc(sizeof(PriorProblems));
		entry->subid = GetCurrentSubTransactionId();
		entry->relids = pstrdup(relids ? relids : "{}");
		entry->recount = pstrdup("{}");
		entry->listed = pstrdup(listed ? listed : "{}");
		entry->renamed = NIL;
		prior_problems = lcons(entry, prior_problems);
		MemoryContextSwitchTo(oldcxt);
		entry->renamed = renamed_tables(parsetree);

		/*
		 * After the record: what prepare_attach() drops is for the end
		 * check to judge, not a problem the table had before.
		 */
		if (IsA(parsetree, AlterTableStmt))
		{
			AlterTableStmt *stmt = (AlterTableStmt *) parsetree;
			Oid			relid = RangeVarGetRelid(stmt->relation, NoLock, true);
			ListCell   *lc;
			StringInfoData buf;

			initStringInfo(&buf);
			foreach(lc, stmt->cmds)
			{
				AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);
				Oid			part;

				if (cmd->subtype == AT_AddColumn || cmd->subtype == AT_DropColumn ||
					cmd->subtype == AT_AlterColumnType)
				{
					/*
					 * The stored values change without row triggers: the
					 * table's storage_bytes is counted again at the end.
					 */
					if (OidIsValid(relid))
						appendStringInfo(&buf, "%s%u", buf.len > 0 ? "," : "", relid);
					continue;
				}
				if (cmd->subtype != AT_AttachPartition)
					continue;
				part = prepare_attach(stmt->relation, (PartitionCmd *) cmd->def);
				if (OidIsValid(part))
					appendStringInfo(&buf, "%s%u", buf.len > 0 ? "," : "", part);
			}
			if (buf.len > 0)
				entry->recount = MemoryContextStrdup(TopTransactionContext,
													  psprintf("{%s}", buf.data));
		}
	}

	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * SQL: tenancy._ddl_prior_problems() RETURNS text, called first by the
 * ddl_command_end trigger: pops what the matching ddl_command_start
 * recorded (the oids of protected tables that were not intact before the
 * command, as an oid[] literal).
 */
Datum
tenancy_ddl_prior_problems(PG_FUNCTION_ARGS)
{
	PriorProblems *entry;
	text	   *result;

	if (prior_problems == NIL)
		PG_RETURN_TEXT_P(cstring_to_text("{}"));
	entry = (PriorProblems *) linitial(prior_problems);
	result = cstring_to_text(entry->relids);
	prior_problems = list_delete_first(prior_problems);
	PG_RETURN_TEXT_P(result);
}

/*
 * SQL: tenancy._ddl_recount() RETURNS text, called by the ddl_command_end
 * trigger before tenancy._ddl_prior_problems(): the tables whose usage the
 * command changes behind the row triggers (an oid[] literal), as the
 * matching ddl_command_start recorded them: protected tables attached to a
 * protected table (their rows count for the new root), tables whose
 * columns are added, dropped or retyped (their stored sizes change).
 */
Datum
tenancy_ddl_recount(PG_FUNCTION_ARGS)
{
	if (prior_problems == NIL)
		PG_RETURN_TEXT_P(cstring_to_text("{}"));
	PG_RETURN_TEXT_P(cstring_to_text(((PriorProblems *) linitial(prior_problems))->recount));
}

/*
 * SQL: tenancy._ddl_follow_renames() RETURNS void, called by the
 * ddl_command_end trigger before tenancy._ddl_prior_problems(): the
 * protected tables whose rows:<table> name the command changed (as the
 * matching ddl_command_start recorded them) take their usage and limits
 * along (tenancy_quota_rename()).
 */
Datum
tenancy_ddl_follow_renames(PG_FUNCTION_ARGS)
{
	PriorProblems *entry;
	ListCell   *lc;

	if (prior_problems == NIL)
		PG_RETURN_VOID();
	entry = (PriorProblems *) linitial(prior_problems);
	foreach(lc, entry->renamed)
	{
		RenamedTable *r = lfirst(lc);
		char		name[TENANCY_RESOURCE_LEN];

		if (get_rel_relkind(r->relid) == '\0')
			continue;
		tenancy_quota_rows_name(r->relid, name);
		if (strcmp(name, r->name) != 0)
			tenancy_quota_rename(r->relid, r->name, name);
	}
	entry->renamed = NIL;
	PG_RETURN_VOID();
}

/*
 * SQL: tenancy._ddl_prior_listed() RETURNS text, called by the
 * ddl_command_end trigger before tenancy._ddl_prior_problems(): the
 * protected tables as ddl_command_start saw them (an oid[] literal).  Only
 * those are judged at the end: a table another session lists meanwhile (a
 * parallel pg_restore loading tenancy.protected_tables while this worker
 * makes triggers) is not this command's doing.
 */
Datum
tenancy_ddl_prior_listed(PG_FUNCTION_ARGS)
{
	if (prior_problems == NIL)
		PG_RETURN_TEXT_P(cstring_to_text("{}"));
	PG_RETURN_TEXT_P(cstring_to_text(((PriorProblems *) linitial(prior_problems))->listed));
}
