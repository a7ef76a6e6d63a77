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
#include "catalog/namespace.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "tenancy.h"

static ExecutorCheckPerms_hook_type prev_ExecutorCheckPerms = NULL;

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
 * Is the table within the key's scopes?  A scope is matched against the
 * table's schema-qualified name and, when the table is visible in the
 * search_path, against its bare name: the two ways regclass::text prints
 * it.
 */
static bool
in_scopes(const TenancyKeyBinding *b, Oid relid)
{
	char	   *relname = get_rel_name(relid);
	char	   *nspname = get_namespace_name(get_rel_namespace(relid));
	const char *qualified;
	const char *bare = NULL;
	int			i;

	if (relname == NULL || nspname == NULL)
		return false;
	qualified = quote_qualified_identifier(nspname, relname);
	if (RelationIsVisible(relid))
		bare = quote_identifier(relname);
	for (i = 0; i < b->nscopes; i++)
		if (glob_match(b->scopes[i], qualified) ||
			(bare != NULL && glob_match(b->scopes[i], bare)))
			return true;
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

/*
 * ExecutorCheckPerms_hook: the key's permissions and scopes, for every
 * protected table the statement asks privileges on.
 */
static bool
tenancy_ExecutorCheckPerms(TENANCY_PERMS_HOOK_PARAMS)
{
	const TenancyKeyBinding *b = NULL;
	ListCell   *lc;
	Oid			userid;
	int			sec_context;

	if (prev_ExecutorCheckPerms && !TENANCY_PERMS_HOOK_CHAIN(prev_ExecutorCheckPerms))
		return false;
	/* Not bound: nothing to do. */
	if (tenancy_guc_session_binding == NULL || tenancy_guc_session_binding[0] == '\0')
		return true;

	/*
	 * PostgreSQL's own foreign-key checks and actions (ri_triggers.c) run
	 * as the table's owner with SECURITY_NOFORCE_RLS: they are part of the
	 * statement the key allowed, not statements of the session, as they do
	 * not need the user's own privileges either.
	 */
	GetUserIdAndSecContext(&userid, &sec_context);
	if (sec_context & SECURITY_NOFORCE_RLS)
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
	RegisterXactCallback(keyperm_xact_callback, NULL);
}
