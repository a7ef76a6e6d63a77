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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_row_guard);
PG_FUNCTION_INFO_V1(tenancy_truncate_guard);
PG_FUNCTION_INFO_V1(tenancy_ddl_bypass);

/* Set by protect()/unprotect() for the DDL they run; reset on any abort. */
static bool ddl_bypass = false;

/* Whether the current user bypasses RLS, cached per transaction. */
static LocalTransactionId bypass_lxid = InvalidLocalTransactionId;
static Oid	bypass_user = InvalidOid;
static bool bypass_rls = false;

static void
protect_xact_callback(XactEvent event, void *arg)
{
	ddl_bypass = false;
}

static void
protect_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		ddl_bypass = false;
}

void
tenancy_protect_init(void)
{
	RegisterXactCallback(protect_xact_callback, NULL);
	RegisterSubXactCallback(protect_subxact_callback, NULL);
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

		if (!isnull && memcmp(DatumGetUUIDP(value)->data, tenant->data, UUID_LEN) != 0)
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
