/*-------------------------------------------------------------------------
 *
 * keyperm.c
 *		What a session bound to an API key may do with protected tables:
 *		the key's permissions (read, write) and scopes.
 *
 * Enforced once per statement, not per row, in ExecutorCheckPerms_hook,
 * which PostgreSQL calls after its own privilege checks with the range
 * table of every plan (SELECT, INSERT, UPDATE, DELETE, MERGE, and the
 * queries of COPY) and from COPY FROM.  For each relation the statement
 * asks privileges on (requiredPerms != 0: partitions and inheritance
 * children reached through their parent are judged by the parent) that is
 * listed in tenancy.protected_tables:
 *   - ACL_SELECT needs 'read';
 *   - ACL_INSERT, ACL_UPDATE or ACL_DELETE needs 'write';
 *   - when the key has scopes, the table must match one of them.
 * So a key's permissions act like table privileges: an UPDATE or DELETE
 * that reads columns (WHERE, RETURNING) needs 'read' as well, as it needs
 * SELECT privilege; SELECT ... FOR UPDATE needs 'write'.
 *
 * Parallel workers check like any backend: the binding reaches them with
 * the leader's settings (tenancy.session_binding is restored like any
 * setting that is not at its default), and a worker runs queries its
 * leader never saw (the SQL of a PARALLEL SAFE function).
 *
 * Foreign keys: the one query PostgreSQL's ri_triggers.c runs for a
 * foreign-key check or action is not judged (it runs as the table's owner,
 * without the user's privileges, for a statement the key allowed); what
 * runs inside it is.  ri_triggers.c runs that query through SPI with
 * SECURITY_NOFORCE_RLS added to the security context, and the flag stays
 * set for everything the query calls: BEFORE row triggers of the
 * referencing table, defaults, CHECK constraints, operators.  So the
 * planner and executor hooks here mark the planning and execution of a
 * query started with the flag by no such query ("RI query"), and only the
 * permission check of that very plan (the same list the hook is given by
 * InitPlan), and only when it has the shape of an RI query (one relation
 * asking privileges, owned by the current user as ri_triggers.c arranges,
 * read FOR KEY SHARE, updated or deleted from), is exempt.  A query that
 * starts while an RI query is planned or run is judged, whatever it is;
 * so are the rule actions an RI query is rewritten into, which carry the
 * original query's relation besides their own.
 *
 * The set of protected relids is read once per transaction (and only in
 * bound sessions); unbound sessions pay one string test per statement.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "optimizer/planner.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "tenancy.h"

static ExecutorCheckPerms_hook_type prev_ExecutorCheckPerms = NULL;
static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorRun_hook_type prev_ExecutorRun = NULL;
static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;
static planner_hook_type prev_planner = NULL;

/*
 * Foreign-key queries (see the file header).  ri_active: an RI query is
 * being planned or run (in its ExecutorStart, ExecutorRun or
 * ExecutorFinish); ri_stmt: the plan of the RI query in its ExecutorStart,
 * until its permission check.
 */
static bool ri_active = false;
static PlannedStmt *ri_stmt = NULL;

/* Protected relids of this transaction, sorted; valid while loaded. */
static MemoryContext keyperm_cxt = NULL;
static bool protected_loaded = false;
static Oid *protected_relids = NULL;
static int	nprotected = 0;

static int
relid_cmp(const void *a, const void *b)
{
	Oid			x = *(const Oid *) a;
	Oid			y = *(const Oid *) b;

	return (x > y) - (x < y);
}

/* Read tenancy.protected_tables (column 1, relid) once per transaction. */
static void
load_protected(void)
{
	Oid			relid = tenancy_relation_oid("protected_tables", true);
	int			cap = 16;

	if (keyperm_cxt == NULL)
		keyperm_cxt = AllocSetContextCreate(TopMemoryContext, "tenancy key permissions",
											ALLOCSET_SMALL_SIZES);
	MemoryContextReset(keyperm_cxt);
	protected_relids = MemoryContextAlloc(keyperm_cxt, sizeof(Oid) * cap);
	nprotected = 0;

	if (OidIsValid(relid))
	{
		Relation	rel = table_open(relid, AccessShareLock);
		Snapshot	snapshot = ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
		TableScanDesc scan = table_beginscan(rel, snapshot, 0, NULL);
		HeapTuple	tuple;

		while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			bool		isnull;
			Datum		d = heap_getattr(tuple, 1, RelationGetDescr(rel), &isnull);

			if (isnull)
				continue;
			if (nprotected == cap)
			{
				cap *= 2;
				protected_relids = repalloc(protected_relids, sizeof(Oid) * cap);
			}
			protected_relids[nprotected++] = DatumGetObjectId(d);
		}
		table_endscan(scan);
		table_close(rel, AccessShareLock);
		qsort(protected_relids, nprotected, sizeof(Oid), relid_cmp);
	}
	protected_loaded = true;
}

static bool
is_protected(Oid relid)
{
	if (!protected_loaded)
		load_protected();
	return nprotected > 0 &&
		bsearch(&relid, protected_relids, nprotected, sizeof(Oid), relid_cmp) != NULL;
}

/* Does name match pattern, where '*' stands for any run of characters? */
static bool
glob_match(const char *pattern, const char *name)
{
	const char *star = NULL;
	const char *retry = NULL;

	while (*name)
	{
		if (*pattern == '*')
		{
			star = pattern++;
			retry = name;
		}
		else if (*pattern == *name)
		{
			pattern++;
			name++;
		}
		else if (star)
		{
			pattern = star + 1;
			name = ++retry;
		}
		else
			return false;
	}
	while (*pattern == '*')
		pattern++;
	return *pattern == '\0';
}

/*
 * Does a scope pattern name a schema: a '.' outside double quotes
 * (public.docs, public.*, "Sch".*, *.t)?
 */
static bool
scope_has_schema(const char *pattern)
{
	bool		quoted = false;

	for (; *pattern; pattern++)
	{
		if (*pattern == '"')
			quoted = !quoted;
		else if (*pattern == '.' && !quoted)
			return true;
	}
	return false;
}

/*
 * quote_identifier() with quote_all_identifiers at its default, off: the
 * key's holder may set it, and what a scope matches must not depend on
 * anything the holder sets.
 */
static const char *
quote_ident_default(const char *ident)
{
	const char *result;

	if (!quote_all_identifiers)
		return quote_identifier(ident);
	quote_all_identifiers = false;
	PG_TRY();
	{
		result = quote_identifier(ident);
	}
	PG_FINALLY();
	{
		quote_all_identifiers = true;
	}
	PG_END_TRY();
	return result;
}

/*
 * Is the table within the key's scopes?  Names are quoted as
 * regclass::text quotes them.  A scope with a schema part is matched
 * against the schema-qualified name; one without (a bare name, or a
 * wildcard such as d*) against the bare name of tables of schema public
 * only; the lone '*' matches every table.  Nothing here depends on the
 * session's settings (search_path, quote_all_identifiers): the key's
 * holder sets them.
 */
static bool
in_scopes(const TenancyKeyBinding *b, Oid relid)
{
	char	   *relname = get_rel_name(relid);
	char	   *nspname = get_namespace_name(get_rel_namespace(relid));
	const char *bare;
	const char *qualified;
	bool		in_public;
	int			i;

	if (relname == NULL || nspname == NULL)
		return false;
	bare = quote_ident_default(relname);
	qualified = psprintf("%s.%s", quote_ident_default(nspname), bare);
	in_public = strcmp(nspname, "public") == 0;
	for (i = 0; i < b->nscopes; i++)
	{
		const char *pattern = b->scopes[i];

		if (strcmp(pattern, "*") == 0)
			return true;
		if (scope_has_schema(pattern) ? glob_match(pattern, qualified) :
			in_public && glob_match(pattern, bare))
			return true;
	}
	return false;
}

static void
raise_denied(Oid relid, const char *what)
{
	char	   *relname = get_rel_name(relid);

	if (what != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenancy: permission denied for table %s", relname ? relname : "?"),
				 errdetail("The API key of this session does not have the %s permission.", what),
				 errhint("Authenticate with an API key that has the %s permission.", what)));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("tenancy: permission denied for table %s", relname ? relname : "?"),
			 errdetail("The scopes of the API key of this session do not include this table."),
			 errhint("Authenticate with an API key whose scopes include this table.")));
}

/* Does the security context carry ri_triggers.c's SECURITY_NOFORCE_RLS? */
static bool
noforce_rls(void)
{
	Oid			userid;
	int			sec_context;

	GetUserIdAndSecContext(&userid, &sec_context);
	return (sec_context & SECURITY_NOFORCE_RLS) != 0;
}

/*
 * Would planning or running a query now start an RI query?  The flag is
 * set and no RI query is under way (in which case this is code it called).
 * Never in parallel workers: RI queries are not run in parallel.
 */
static bool
ri_starts(void)
{
	return !ri_active && !IsParallelWorker() && noforce_rls();
}

/*
 * Is this permission check the RI query's own?  The list must be that of
 * the plan in whose ExecutorStart we are, and the plan must look like the
 * queries of ri_triggers.c: one relation asking privileges, owned by the
 * current user (ri_triggers.c runs them as the owner of that table), read
 * with a row lock (the checks: SELECT ... FOR KEY SHARE) or updated or
 * deleted from (the actions).
 */
static bool
is_ri_check(List *perms)
{
	PlannedStmt *stmt = ri_stmt;
	ListCell   *lc;
	Oid			relid = InvalidOid;

	ri_stmt = NULL;				/* one check per RI query */
	if (stmt == NULL || perms == NIL || perms != TENANCY_PLAN_PERMS(stmt) ||
		IsParallelWorker() || !noforce_rls())
		return false;
	if (!((stmt->commandType == CMD_SELECT && stmt->rowMarks != NIL) ||
		  stmt->commandType == CMD_UPDATE || stmt->commandType == CMD_DELETE))
		return false;
	foreach(lc, perms)
	{
		TenancyPermInfo *p = (TenancyPermInfo *) lfirst(lc);

		if (p->requiredPerms == 0)
			continue;
		if (!TENANCY_PERMINFO_IS_RELATION(p) || OidIsValid(relid))
			return false;
		relid = p->relid;
	}
	return OidIsValid(relid) && tenancy_relation_owner(relid, true) == GetUserId();
}

/*
 * ExecutorCheckPerms_hook: the key's permissions and scopes, for every
 * protected table the statement asks privileges on.
 */
static bool
tenancy_ExecutorCheckPerms(TENANCY_PERMS_HOOK_PARAMS)
{
	const TenancyKeyBinding *b = NULL;
	ListCell   *lc;

	if (prev_ExecutorCheckPerms && !TENANCY_PERMS_HOOK_CHAIN(prev_ExecutorCheckPerms))
		return false;
	/* Not bound: nothing to do. */
	if (tenancy_guc_session_binding == NULL || tenancy_guc_session_binding[0] == '\0')
		return true;
	/* The query of a foreign-key check or action itself (file header). */
	if (ri_stmt != NULL && is_ri_check(TENANCY_PERMS_LIST))
		return true;

	foreach(lc, TENANCY_PERMS_LIST)
	{
		TenancyPermInfo *p = (TenancyPermInfo *) lfirst(lc);
		const char *missing = NULL;

		if (!TENANCY_PERMINFO_IS_RELATION(p) || p->requiredPerms == 0 ||
			!is_protected(p->relid))
			continue;
		if (b == NULL)
		{
			b = tenancy_apikey_binding();
			if (b == NULL)
				return true;
		}
		if ((p->requiredPerms & (ACL_INSERT | ACL_UPDATE | ACL_DELETE)) &&
			!(b->permissions & TENANCY_KEY_WRITE))
			missing = "write";
		else if ((p->requiredPerms & ACL_SELECT) && !(b->permissions & TENANCY_KEY_READ))
			missing = "read";
		if (missing == NULL && b->nscopes > 0 && !in_scopes(b, p->relid))
		{
			if (!ereport_on_violation)
				return false;
			raise_denied(p->relid, NULL);
		}
		if (missing != NULL)
		{
			if (!ereport_on_violation)
				return false;
			raise_denied(p->relid, missing);
		}
	}
	return true;
}

/*
 * planner_hook: the planning of an RI query is under way while it is
 * planned (IMMUTABLE functions its defaults call are run by the planner).
 */
static PlannedStmt *
tenancy_planner(Query *parse, const char *query_string, int cursorOptions,
				ParamListInfo boundParams)
{
	PlannedStmt *result;

	if (!ri_starts())
		return prev_planner ?
			prev_planner(parse, query_string, cursorOptions, boundParams) :
			standard_planner(parse, query_string, cursorOptions, boundParams);
	ri_active = true;
	PG_TRY();
	{
		result = prev_planner ?
			prev_planner(parse, query_string, cursorOptions, boundParams) :
			standard_planner(parse, query_string, cursorOptions, boundParams);
	}
	PG_FINALLY();
	{
		ri_active = false;
	}
	PG_END_TRY();
	return result;
}

/*
 * ExecutorStart hook: an RI query starts; its plan is remembered for its
 * permission check, which InitPlan does first.
 */
static void
tenancy_keyperm_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (!ri_starts())
	{
		if (prev_ExecutorStart)
			prev_ExecutorStart(queryDesc, eflags);
		else
			standard_ExecutorStart(queryDesc, eflags);
		return;
	}
	ri_active = true;
	ri_stmt = queryDesc->plannedstmt;
	PG_TRY();
	{
		if (prev_ExecutorStart)
			prev_ExecutorStart(queryDesc, eflags);
		else
			standard_ExecutorStart(queryDesc, eflags);
	}
	PG_FINALLY();
	{
		ri_active = false;
		ri_stmt = NULL;
	}
	PG_END_TRY();
}

/* ExecutorRun hook: an RI query runs (its triggers, defaults, checks). */
static void
tenancy_keyperm_ExecutorRun(QueryDesc *queryDesc, ScanDirection direction,
							uint64 count, bool execute_once)
{
	if (!ri_starts())
	{
		if (prev_ExecutorRun)
			prev_ExecutorRun(queryDesc, direction, count, execute_once);
		else
			standard_ExecutorRun(queryDesc, direction, count, execute_once);
		return;
	}
	ri_active = true;
	PG_TRY();
	{
		if (prev_ExecutorRun)
			prev_ExecutorRun(queryDesc, direction, count, execute_once);
		else
			standard_ExecutorRun(queryDesc, direction, count, execute_once);
	}
	PG_FINALLY();
	{
		ri_active = false;
	}
	PG_END_TRY();
}

/* ExecutorFinish hook: an RI query finishes (its ModifyTable nodes). */
static void
tenancy_keyperm_ExecutorFinish(QueryDesc *queryDesc)
{
	if (!ri_starts())
	{
		if (prev_ExecutorFinish)
			prev_ExecutorFinish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
		return;
	}
	ri_active = true;
	PG_TRY();
	{
		if (prev_ExecutorFinish)
			prev_ExecutorFinish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		ri_active = false;
	}
	PG_END_TRY();
}

static void
keyperm_xact_callback(XactEvent event, void *arg)
{
	protected_loaded = false;
}

/* Called from tenancy_apikey_init. */
void
tenancy_keyperm_init(void)
{
	prev_ExecutorCheckPerms = ExecutorCheckPerms_hook;
	ExecutorCheckPerms_hook = tenancy_ExecutorCheckPerms;
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = tenancy_keyperm_ExecutorStart;
	prev_ExecutorRun = ExecutorRun_hook;
	ExecutorRun_hook = tenancy_keyperm_ExecutorRun;
	prev_ExecutorFinish = ExecutorFinish_hook;
	ExecutorFinish_hook = tenancy_keyperm_ExecutorFinish;
	prev_planner = planner_hook;
	planner_hook = tenancy_planner;
	RegisterXactCallback(keyperm_xact_callback, NULL);
}
