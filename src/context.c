/*-------------------------------------------------------------------------
 *
 * context.c
 *		The tenant context: who may act for which tenant, and the validated
 *		context of the current transaction.
 *
 * The rule (SPEC section 2): superusers and members of tenancy_app or
 * tenancy_admin may act for any tenant; a session bound to a tenant by
 * tenancy.authenticate() only for that tenant; everyone else for none.
 * It is judged by the login role (session_user), so a privileged login may
 * set the context and then SET ROLE to a less privileged role.
 *
 * guc.c checks the rule where the value is set.  Here it is checked again
 * where the value is used: the first call of current_tenant_id() in a
 * transaction validates the setting (privilege, existence, status) and
 * caches the result until the transaction ends or a context setting
 * changes.  Every later call, one per row if need be, is a flag test.
 *
 * Parallel workers inherit the settings and check the privilege again, but
 * must not check existence and status again against a later snapshot than
 * the one the leader used (a tenant suspended after the leader's first use
 * would fail one transaction early there).  So before running a parallel
 * plan the leader publishes what it validated in the internal setting
 * tenancy.context_checked (SET LOCAL, so it ends with the transaction; a
 * superuser-only setting, so no one else can forge it), and a worker whose
 * context matches it takes the leader's word for existence and status.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "rewrite/rowsecurity.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/rls.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_current_tenant_id);
PG_FUNCTION_INFO_V1(tenancy_set_tenant);

/*
 * The context validated in this transaction; valid until it ends, a context
 * setting changes (assign hooks), a subtransaction aborts (its settings are
 * rolled back) or the session user changes (SET SESSION AUTHORIZATION, which
 * changes whose rights count).
 */
static bool context_valid = false;
static Oid	context_session_user = InvalidOid;
static pg_uuid_t *context_tenant = NULL;	/* in TopTransactionContext */

/* Whether tenancy.context_checked holds the cached context. */
static bool checked_current = false;

static ExecutorStart_hook_type prev_ExecutorStart = NULL;

/*
 * Whether a context setting changed inside a security-restricted operation
 * in this transaction.  The check hooks refuse such changes, but a RESET
 * (RESET, SET ... TO DEFAULT, set_config(..., NULL, ...), RESET ALL) does
 * not go through them: such a change is refused where the context is used.
 */
static bool changed_while_restricted = false;

/*
 * Forget the validated context.  Called by the assign hooks of every
 * context setting and at the end of each transaction; never fails.
 */
void
tenancy_context_invalidate(void)
{
	context_valid = false;
	context_tenant = NULL;
	checked_current = false;
}

/* Assign hooks of the context settings: a value changes.  Never fails. */
void
tenancy_context_assigned(const char *oldval, const char *newval)
{
	/*
	 * The same value again (SET LOCAL of the tenant already set) keeps what
	 * this transaction validated: status is checked once per transaction.
	 */
	if (strcmp(oldval ? oldval : "", newval ? newval : "") == 0)
		return;
	tenancy_context_invalidate();
	if (InSecurityRestrictedOperation())
		changed_while_restricted = true;
}

/* Assign hook of tenancy.context_checked: it no longer says what we set. */
void
tenancy_context_checked_assigned(void)
{
	checked_current = false;
}

/*
 * The value of tenancy.context_checked for a context: the tenant, the
 * session user it was judged for, and the binding.
 */
static void
checked_key(const pg_uuid_t *tenant, Oid session_user, char *buf, size_t len)
{
	char		canonical[TENANCY_UUID_STRLEN + 1];

	tenancy_uuid_format(tenant, canonical);
	snprintf(buf, len, "%s/%u/%s", canonical, session_user,
			 tenancy_guc_session_binding ? tenancy_guc_session_binding : "");
}

/*
 * Before the tenant's status is read for a context of this transaction:
 * tell purge_tenant() that this transaction may write rows of the tenant
 * (shmem.c), then take the invalidations sent so far, so that a status
 * change committed before the purge began is seen even by a transaction
 * that started earlier and finds the tenant in the backend cache.  Either
 * the purge sees the slot and waits for this transaction, or this
 * transaction sees the tenant deleted.  A few stores and a barrier, once
 * per transaction.
 */
static void
publish_tenant(const pg_uuid_t *tenant)
{
	tenancy_shmem_publish_tenant(tenant);
	AcceptInvalidationMessages();
}

/*
 * Validate the context without raising, for the leader of a parallel plan
 * that has not used it yet in this transaction: on success the result is
 * cached as if current_tenant_id() had been called; on any problem nothing
 * happens, and the workers (or the leader) raise the error where the
 * context is used.  A bound session is left alone: its key is validated
 * where the context is used, by the code that may raise for it.
 */
static void
context_validate_quietly(void)
{
	const char *value = tenancy_guc_tenant_id;
	bool		from_default = false;
	pg_uuid_t	tenant;
	pg_uuid_t  *copy;
	TenancyTenant row;

	if (tenancy_context_binding(&tenant, NULL))
		return;
	if (value == NULL || value[0] == '\0')
	{
		value = tenancy_guc_default_tenant;
		from_default = true;
	}
	if (value == NULL || value[0] == '\0' || !tenancy_uuid_parse(value, &tenant))
		return;
	if (!from_default && !tenancy_context_role_may_set_any(GetSessionUserId()))
		return;
	/* The library is preloaded everywhere, the extension maybe not here. */
	if (!OidIsValid(tenancy_relation_oid("tenants", true)))
		return;
	publish_tenant(&tenant);
	if (!tenancy_tenant_lookup(&tenant, &row) || strcmp(row.status, "active") != 0)
		return;

	copy = MemoryContextAlloc(TopTransactionContext, sizeof(pg_uuid_t));
	memcpy(copy, &tenant, sizeof(pg_uuid_t));
	context_tenant = copy;
	context_session_user = GetSessionUserId();
	context_valid = true;
}

/* Does the relation carry tenancy's isolation policy (protect())? */
static bool
has_isolation_policy(Oid relid)
{
	Relation	rel = RelationIdGetRelation(relid);
	bool		found = false;
	ListCell   *lc;

	if (rel == NULL)
		return false;
	if (rel->rd_rsdesc != NULL)
		foreach(lc, rel->rd_rsdesc->policies)
		{
			RowSecurityPolicy *policy = (RowSecurityPolicy *) lfirst(lc);

			if (strcmp(policy->policy_name, "tenancy_isolation") == 0)
			{
				found = true;
				break;
			}
		}
	RelationClose(rel);
	return found;
}

/*
 * Does the plan touch a protected table under row level security, for the
 * role the table is accessed as?
 */
static bool
plan_uses_protected_table(const PlannedStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, TENANCY_PLAN_PERMS(stmt))
	{
		TenancyPermInfo *p = (TenancyPermInfo *) lfirst(lc);

		if (TENANCY_PERMINFO_IS_RELATION(p) && p->requiredPerms != 0 &&
			has_isolation_policy(p->relid) &&
			check_enable_rls(p->relid, p->checkAsUser, true) == RLS_ENABLED)
			return true;
	}
	return false;
}

/*
 * ExecutorStart hook.
 *
 * A plan that touches a protected table under row level security validates
 * the context first: every access without a valid context fails (TN001,
 * TN002, TN003), also when the policy, which checks it when it meets a
 * row, never runs (an empty table, WHERE false).  Once per transaction
 * (cached); not for EXPLAIN without ANALYZE; parallel workers rely on
 * their leader.
 *
 * Before a plan that may use parallel workers runs, publish the context
 * validated in this transaction for them (validating it first if need
 * be).  Settings cannot change in parallel mode, which starts later, in
 * ExecutorRun.
 */
static void
tenancy_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (!(eflags & EXEC_FLAG_EXPLAIN_ONLY) && !IsParallelWorker() &&
		!(context_valid && context_session_user == GetSessionUserId()) &&
		plan_uses_protected_table(queryDesc->plannedstmt))
		(void) tenancy_context_current();
	if (queryDesc->plannedstmt->parallelModeNeeded &&
		!IsInParallelMode() && IsTransactionState())
	{
		if (!context_valid || context_session_user != GetSessionUserId())
		{
			context_valid = false;
			checked_current = false;
			context_validate_quietly();
		}
		if (context_valid && !checked_current)
		{
			char		buf[160];

			checked_key(context_tenant, context_session_user, buf, sizeof(buf));
			(void) set_config_option("tenancy.context_checked", buf,
									 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL,
									 true, 0, false);
			checked_current = true;
		}
	}
	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * In a parallel worker: did the leader validate this very context in this
 * transaction?
 */
static bool
checked_by_leader(const pg_uuid_t *tenant)
{
	char		buf[160];

	if (!IsParallelWorker() || tenancy_guc_context_checked == NULL ||
		tenancy_guc_context_checked[0] == '\0')
		return false;
	checked_key(tenant, GetSessionUserId(), buf, sizeof(buf));
	return strcmp(buf, tenancy_guc_context_checked) == 0;
}

/*
 * In a parallel worker: did the leader validate this session's context in
 * this transaction, and so its binding (which context_validate validates
 * first)?  apikey.c then takes the leader's word for the key's state.
 */
bool
tenancy_context_leader_checked(void)
{
	pg_uuid_t	tenant;

	return tenancy_context_claimed(&tenant) && checked_by_leader(&tenant);
}

static void
context_xact_callback(XactEvent event, void *arg)
{
	tenancy_context_invalidate();
	changed_while_restricted = false;
}

void
tenancy_context_init(void)
{
	RegisterXactCallback(context_xact_callback, NULL);
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = tenancy_ExecutorStart;
}

/* Is roleid a member (directly or not) of the role named rolname? */
static bool
member_of(Oid roleid, const char *rolname)
{
	Oid			target = get_role_oid(rolname, true);

	return OidIsValid(target) && is_member_of_role(roleid, target);
}

/*
 * May this role act for any tenant?  Superusers and members of tenancy_app
 * or tenancy_admin.  Needs a transaction (it reads the role catalogs).
 */
bool
tenancy_context_role_may_set_any(Oid roleid)
{
	return superuser_arg(roleid) ||
		member_of(roleid, "tenancy_app") ||
		member_of(roleid, "tenancy_admin");
}

/*
 * Is the current user an administrator of tenancy (superuser or member of
 * tenancy_admin)?  This is the test for the "tenant" arguments that let an
 * admin act on another tenant's behalf.
 */
bool
tenancy_context_is_admin(void)
{
	Oid			roleid = GetUserId();

	return superuser_arg(roleid) || member_of(roleid, "tenancy_admin");
}

/*
 * The API-key binding of this session or transaction, if any.
 */
bool
tenancy_context_binding(pg_uuid_t *tenant, pg_uuid_t *key)
{
	const char *value = tenancy_guc_session_binding;
	char		part[TENANCY_UUID_STRLEN + 1];
	pg_uuid_t	dummy;

	if (value == NULL || strlen(value) != 2 * TENANCY_UUID_STRLEN + 1)
		return false;
	memcpy(part, value, TENANCY_UUID_STRLEN);
	part[TENANCY_UUID_STRLEN] = '\0';
	if (!tenancy_uuid_parse(part, tenant))
		return false;
	return tenancy_uuid_parse(value + TENANCY_UUID_STRLEN + 1, key ? key : &dummy);
}

/*
 * May this session act for the given tenant?  A bound session only for the
 * tenant of its key, whoever logged in; otherwise the login role decides.
 */
bool
tenancy_context_may_set(const pg_uuid_t *tenant)
{
	pg_uuid_t	bound;

	if (tenancy_context_binding(&bound, NULL))
		return memcmp(bound.data, tenant->data, UUID_LEN) == 0;
	return tenancy_context_role_may_set_any(GetSessionUserId());
}

/*
 * The tenant this session claims to act for, unvalidated: the binding's,
 * else app.tenant_id, else tenancy.default_tenant.  Returns false when
 * there is none.
 */
bool
tenancy_context_claimed(pg_uuid_t *tenant)
{
	if (tenancy_context_binding(tenant, NULL))
		return true;
	if (tenancy_guc_tenant_id && tenancy_guc_tenant_id[0] != '\0')
		return tenancy_uuid_parse(tenancy_guc_tenant_id, tenant);
	if (tenancy_guc_default_tenant && tenancy_guc_default_tenant[0] != '\0')
		return tenancy_uuid_parse(tenancy_guc_default_tenant, tenant);
	return false;
}

/*
 * Raise 42501 for a context the session may not use.  bound: whether the
 * session is bound to a (different) tenant by an API key.
 */
static void
raise_not_permitted(bool bound)
{
	if (bound)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenancy: permission denied to act for this tenant"),
				 errdetail("This session is bound to another tenant by tenancy.authenticate()."),
				 errhint("Call tenancy.logout(), then authenticate with an API key of the tenant.")));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("tenancy: permission denied to act for this tenant"),
			 errdetail("Only superusers, members of tenancy_app or tenancy_admin, and a session authenticated by an API key of that tenant may act for a tenant; the session user is none of these."),
			 errhint("Call tenancy.authenticate() with an API key of the tenant, or connect as a member of tenancy_app.")));
}

/*
 * Validate the context setting: the second enforcement of the rule, judged
 * by session_user or the binding, then existence and status.  Raises
 * TN001, 42501, TN002 or TN003.
 *
 * The privilege test catches values that reached app.tenant_id without the
 * check hook judging them (postgresql.conf, ALTER SYSTEM), and values that
 * were legitimate when set but are no longer (SET SESSION AUTHORIZATION to
 * a less privileged role, a binding replaced or dropped).
 */
static void
context_validate(pg_uuid_t *result)
{
	pg_uuid_t	bound_tenant;
	pg_uuid_t	bound_key;
	bool		bound = tenancy_context_binding(&bound_tenant, &bound_key);
	bool		from_default = false;
	const char *value = tenancy_guc_tenant_id;
	char		canonical[TENANCY_UUID_STRLEN + 1];
	TenancyTenant tenant;
	bool		parsed;
	bool		leader_checked;

	tenancy_require_preloaded();
	if (changed_while_restricted && InSecurityRestrictedOperation())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenancy: app.tenant_id cannot be changed inside a security-restricted operation"),
				 errdetail("The tenant context was reset by code running as the owner of a relation (an index expression, a materialized view query or a maintenance command)."),
				 errhint("Do not change or reset the tenant context in index expressions, materialized view queries or functions they call.")));
	if (value == NULL || value[0] == '\0')
	{
		value = tenancy_guc_default_tenant;
		from_default = true;
	}
	parsed = value != NULL && tenancy_uuid_parse(value, result);
	leader_checked = parsed && checked_by_leader(result);

	if (bound && !leader_checked)
		tenancy_apikey_validate_binding(&bound_tenant, &bound_key);

	if (value == NULL || value[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_TENANCY_NO_CONTEXT),
				 errmsg("tenancy: no tenant context"),
				 errdetail("app.tenant_id is not set in this session and tenancy.default_tenant is empty."),
				 errhint("SET app.tenant_id to the tenant's id, or call tenancy.set_tenant() or tenancy.authenticate().")));
	if (!parsed)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: app.tenant_id must be a uuid or empty"),
				 errdetail("The value \"%s\" is not a uuid.", value)));

	/*
	 * A bound session acts for its key's tenant only, also through
	 * tenancy.default_tenant.  Otherwise the login role decides; the
	 * default tenant is the administrator's choice for every session.
	 */
	if (bound)
	{
		if (memcmp(bound_tenant.data, result->data, UUID_LEN) != 0)
			raise_not_permitted(true);
	}
	else if (!from_default && !tenancy_context_role_may_set_any(GetSessionUserId()))
		raise_not_permitted(false);

	/* A parallel worker takes its leader's word for the rest. */
	if (leader_checked)
		return;

	publish_tenant(result);
	if (!tenancy_tenant_lookup(result, &tenant))
	{
		/* (formatted for the messages only: this runs in every transaction) */
		tenancy_uuid_format(result, canonical);
		ereport(ERROR,
				(errcode(ERRCODE_TENANCY_UNKNOWN_TENANT),
				 errmsg("tenancy: unknown tenant"),
				 errdetail("No tenant has the id %s (the value of %s).", canonical,
						   from_default ? "tenancy.default_tenant" : "app.tenant_id"),
				 errhint("Set app.tenant_id to the id of an existing tenant.")));
	}
	if (strcmp(tenant.status, "active") != 0)
	{
		tenancy_uuid_format(result, canonical);
		ereport(ERROR,
				(errcode(ERRCODE_TENANCY_TENANT_NOT_ACTIVE),
				 errmsg("tenancy: tenant is %s", tenant.status),
				 errdetail("Tenant %s is %s; its data cannot be accessed.", canonical, tenant.status),
				 strcmp(tenant.status, "expired") == 0 ?
				 errhint("An administrator can extend it with tenancy.update_tenant(expires_at => ...).") :
				 errhint("An administrator can call tenancy.activate_tenant().")));
	}
}

/*
 * The validated tenant of this transaction.  The first call validates and
 * caches; later calls return the cached uuid, which lives until the end of
 * the transaction.
 */
const pg_uuid_t *
tenancy_context_current(void)
{
	pg_uuid_t	tenant;
	pg_uuid_t  *copy;
	Oid			session_user = GetSessionUserId();

	if (likely(context_valid && context_session_user == session_user))
		return context_tenant;

	context_valid = false;
	context_validate(&tenant);
	copy = MemoryContextAlloc(TopTransactionContext, sizeof(pg_uuid_t));
	memcpy(copy, &tenant, sizeof(pg_uuid_t));
	context_tenant = copy;
	context_session_user = session_user;
	context_valid = true;
	return context_tenant;
}

/*
 * Refuse to act on another tenant than the session's own, unless the caller
 * is an administrator.  The same error whether the other tenant exists or
 * not, so that nothing is revealed.
 */
void
tenancy_context_require_own(const pg_uuid_t *tenant)
{
	pg_uuid_t	claimed;

	if (tenancy_context_is_admin())
		return;
	/* without any context, no tenant is the caller's own: 42501, not TN001 */
	if (!tenancy_context_claimed(&claimed) ||
		memcmp(claimed.data, tenant->data, UUID_LEN) != 0 ||
		memcmp(tenancy_context_current()->data, tenant->data, UUID_LEN) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenancy: permission denied for another tenant"),
				 errdetail("This session acts for its own tenant only."),
				 errhint("Omit the tenant argument, or call as a member of tenancy_admin.")));
}

/*
 * SQL: tenancy.current_tenant_id() RETURNS uuid, STABLE PARALLEL SAFE.
 *
 * The returned pointer stays valid until the end of the transaction; the
 * caller never modifies a by-reference argument.
 */
Datum
tenancy_current_tenant_id(PG_FUNCTION_ARGS)
{
	PG_RETURN_UUID_P((pg_uuid_t *) tenancy_context_current());
}

/*
 * SQL: tenancy.set_tenant(tenant text, is_local boolean DEFAULT false)
 * RETURNS uuid.
 *
 * Resolves a slug or uuid and sets app.tenant_id.  Who may not act for a
 * tenant gets 42501 before anything is looked up, so the answer never
 * tells whether another tenant exists.
 */
Datum
tenancy_set_tenant(PG_FUNCTION_ARGS)
{
	bool		is_local = PG_ARGISNULL(1) ? false : PG_GETARG_BOOL(1);
	char	   *arg;
	TenancyTenant tenant;
	pg_uuid_t	bound;
	bool		is_bound;
	char		buf[TENANCY_UUID_STRLEN + 1];
	pg_uuid_t  *result;

	tenancy_require_preloaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: tenant must not be null"),
				 errhint("Pass a tenant's slug or id, or SET app.tenant_id = '' to clear the context.")));
	arg = text_to_cstring(PG_GETARG_TEXT_PP(0));

	is_bound = tenancy_context_binding(&bound, NULL);
	if (!is_bound && !tenancy_context_role_may_set_any(GetSessionUserId()))
		raise_not_permitted(false);
	if (is_bound)
	{
		if (!tenancy_tenant_try_resolve(arg, &tenant) ||
			memcmp(tenant.id.data, bound.data, UUID_LEN) != 0)
			raise_not_permitted(true);
	}
	else
		tenancy_tenant_resolve(arg, &tenant);

	tenancy_uuid_format(&tenant.id, buf);
	(void) set_config_option("app.tenant_id", buf,
							 superuser() ? PGC_SUSET : PGC_USERSET,
							 PGC_S_SESSION,
							 is_local ? GUC_ACTION_LOCAL : GUC_ACTION_SET,
							 true, 0, false);

	result = palloc(sizeof(pg_uuid_t));
	memcpy(result, &tenant.id, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(result);
}
