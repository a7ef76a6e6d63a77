/*-------------------------------------------------------------------------
 *
 * guc.c
 *		The configuration variables of tenancy and their check and assign
 *		hooks.
 *
 * app.tenant_id is the tenant context.  Its check hook is the first of the
 * two places where the context rule of SPEC section 2 is enforced: it
 * checks the syntax, canonicalises the uuid and, where it can judge it
 * (inside a transaction, so that the role catalogs may be read), refuses a
 * tenant the session may not act for.  Whatever it cannot judge (values
 * read from postgresql.conf on SIGHUP, state restored in a parallel worker)
 * is judged again where the value is used, in context.c.  Check hooks never
 * throw: they report through GUC_check_err* and return false.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"

#include "tenancy.h"

char	   *tenancy_guc_tenant_id = NULL;
char	   *tenancy_guc_default_tenant = NULL;
char	   *tenancy_guc_session_binding = NULL;
char	   *tenancy_guc_context_checked = NULL;
bool		tenancy_guc_auto_protect = false;
double		tenancy_guc_soft_limit_ratio = 0.8;
char	   *tenancy_guc_purge_after = NULL;
char	   *tenancy_guc_audit_retention = NULL;
int			tenancy_guc_usage_flush_delay = 1000;

/*
 * 1 + the value of each hexadecimal digit, 0 for any other byte: the uuid
 * parser runs in every statement of a bound session, and isxdigit() and
 * tolower() are calls.
 */
static const uint8 hex_digit[256] = {
	['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5,
	['5'] = 6, ['6'] = 7, ['7'] = 8, ['8'] = 9, ['9'] = 10,
	['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
	['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

/*
 * Parse a uuid in any of the forms uuid_in accepts: 32 hex digits, an
 * optional hyphen after any group of four, optionally within braces.
 * Returns false instead of raising, so GUC check hooks can use it.
 */
bool
tenancy_uuid_parse(const char *str, pg_uuid_t *out)
{
	const char *p = str;
	bool		braces = false;
	int			digits = 0;

	if (str == NULL)
		return false;
	if (*p == '{')
	{
		braces = true;
		p++;
	}
	while (digits < UUID_LEN * 2)
	{
		int			hi;
		int			lo;

		if (*p == '-' && digits > 0 && digits % 4 == 0 && p[-1] != '-')
			p++;
		hi = hex_digit[(unsigned char) p[0]];
		lo = hi == 0 ? 0 : hex_digit[(unsigned char) p[1]];
		if (lo == 0)
			return false;
		out->data[digits / 2] = (unsigned char) (((hi - 1) << 4) | (lo - 1));
		digits += 2;
		p += 2;
	}
	if (braces)
	{
		if (*p != '}')
			return false;
		p++;
	}
	return *p == '\0';
}

/* Format a uuid in canonical lower-case form into buf (37 bytes). */
void
tenancy_uuid_format(const pg_uuid_t *uuid, char *buf)
{
	static const char hex[] = "0123456789abcdef";
	int			i;
	char	   *p = buf;

	for (i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*p++ = '-';
		*p++ = hex[uuid->data[i] >> 4];
		*p++ = hex[uuid->data[i] & 0x0F];
	}
	*p = '\0';
}

/*
 * Check the syntax of a tenant uuid setting and replace it with its
 * canonical form.  The empty string means "no tenant".
 */
static bool
check_uuid_syntax(const char *name, char **newval, pg_uuid_t *uuid)
{
	char		canonical[TENANCY_UUID_STRLEN + 1];

	if (!tenancy_uuid_parse(*newval, uuid))
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errmsg("tenancy: %s must be a uuid or empty", name);
		GUC_check_errdetail("The value \"%s\" is not a uuid.", *newval);
		GUC_check_errhint("Set it to a tenant's id, as tenancy.create_tenant() returns it, or to ''.");
		return false;
	}
	tenancy_uuid_format(uuid, canonical);
	if (strcmp(canonical, *newval) != 0)
	{
		char	   *copy = tenancy_guc_strdup(canonical);

		if (copy == NULL)
			return false;
		tenancy_guc_free(*newval);
		*newval = copy;
	}
	return true;
}

/*
 * Refuse any change of a context setting inside a security-restricted
 * operation (an index expression, a materialized view refresh, ANALYZE):
 * there, code of the relation's owner runs on behalf of whoever started the
 * operation, and must not act for another tenant with that session's
 * rights, nor drop the context.  Core's GUC_NOT_WHILE_SEC_REST flag would
 * also refuse changes inside SECURITY DEFINER functions, which must remain
 * possible (tenancy.authenticate()), so this is checked here.
 */
static bool
check_not_restricted(const char *name)
{
	if (!InSecurityRestrictedOperation())
		return true;
	GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
	GUC_check_errmsg("tenancy: %s cannot be changed inside a security-restricted operation", name);
	GUC_check_errdetail("Index expressions, materialized view queries and maintenance commands run as the owner of the relation and may not change the tenant context.");
	return false;
}

/*
 * app.tenant_id: syntax first, then the privilege rule where it can be
 * judged.
 *
 * Paths that reach this hook (PostgreSQL 15):
 *  - SET, SET LOCAL, set_config(), set_tenant(), RESET is not checked (it
 *    restores a value that was checked when set): source PGC_S_SESSION,
 *    inside a transaction, so the rule is judged here.
 *  - a function's SET clause when the function is called (ProcessGUCArray,
 *    GUC_ACTION_SAVE, PGC_S_SESSION), inside a transaction: judged here.
 *  - CREATE FUNCTION ... SET, ALTER ROLE/DATABASE ... SET: validated with
 *    PGC_S_TEST inside a transaction, judged against the session that runs
 *    the command; the value is judged again when applied.
 *  - startup-packet options (PGOPTIONS, PGC_S_CLIENT) and pg_db_role_setting
 *    (ALTER ROLE/DATABASE SET, PGC_S_DATABASE_USER etc.) are applied by
 *    InitPostgres inside its start-up transaction, after the session user is
 *    known: judged here.  A refused PGOPTIONS value makes the connection
 *    fail (FATAL); a refused ALTER ROLE/DATABASE value is reported as a
 *    WARNING and not applied.
 *  - postgresql.conf, ALTER SYSTEM and -c on the postmaster's command line
 *    (PGC_S_FILE and lower), at start-up (define_custom_variable in the
 *    postmaster) or on SIGHUP: outside a transaction, the catalogs cannot be
 *    read, so only the syntax is checked; context.c judges the value where
 *    it is used.
 *  - parallel workers restoring their leader's state (RestoreGUCState):
 *    the leader's value was checked already, the worker copies it as it is
 *    (InitializingParallelWorker).
 *  - the boot value '' (PGC_S_DEFAULT).
 * The hook never throws and never runs SPI: the membership test goes
 * through the syscache, as core's check_role does.
 */
static bool
check_app_tenant_id(char **newval, void **extra, GucSource source)
{
	pg_uuid_t	uuid;
	bool		empty = (*newval == NULL || **newval == '\0');
	pg_uuid_t	bound;

	if (!empty && !check_uuid_syntax("app.tenant_id", newval, &uuid))
		return false;

	/* The boot value, and parallel workers copying the leader's state. */
	if (source == PGC_S_DEFAULT || InitializingParallelWorker)
		return true;

	if (!check_not_restricted("app.tenant_id"))
		return false;

	/* Anyone may clear the context. */
	if (empty)
		return true;

	/*
	 * Role membership can only be read inside a transaction.  Outside one
	 * (postgresql.conf at start-up or on SIGHUP) the value is judged where
	 * it is used.
	 */
	if (!IsTransactionState() || tenancy_context_may_set(&uuid))
		return true;

	GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
	GUC_check_errmsg("tenancy: permission denied to set app.tenant_id");
	if (tenancy_context_binding(&bound, NULL))
		GUC_check_errdetail("This session is bound to another tenant by tenancy.authenticate().");
	else
		GUC_check_errdetail("Only superusers, members of tenancy_app or tenancy_admin, and a session authenticated by an API key of that tenant may act for a tenant; the session user is none of these.");
	GUC_check_errhint("Call tenancy.authenticate() with an API key of the tenant, or connect as a member of tenancy_app.");
	return false;
}

/*
 * Any change of the context invalidates the per-transaction cache (and one
 * inside a security-restricted operation, which only a RESET can make past
 * the check hooks, is refused where the context is used).  An assign hook
 * runs before the variable takes the new value.
 */
static void
assign_app_tenant_id(const char *newval, void *extra)
{
	tenancy_context_assigned(tenancy_guc_tenant_id, newval);
}

static void
assign_default_tenant(const char *newval, void *extra)
{
	tenancy_context_assigned(tenancy_guc_default_tenant, newval);
}

static void
assign_session_binding(const char *newval, void *extra)
{
	tenancy_context_assigned(tenancy_guc_session_binding, newval);
}

static bool
check_default_tenant(char **newval, void **extra, GucSource source)
{
	pg_uuid_t	uuid;

	if (*newval != NULL && **newval != '\0' &&
		!check_uuid_syntax("tenancy.default_tenant", newval, &uuid))
		return false;
	if (source == PGC_S_DEFAULT || InitializingParallelWorker)
		return true;
	return check_not_restricted("tenancy.default_tenant");
}

/*
 * tenancy.session_binding is set only by tenancy.authenticate(), as
 * "<tenant uuid>:<key uuid>" in canonical form.  It is PGC_SUSET, so no
 * other role can set it (nor RESET it: RESET ALL and DISCARD ALL clear it),
 * and it is restored in parallel workers with the other settings.
 */
static bool
check_session_binding(char **newval, void **extra, GucSource source)
{
	const char *colon;
	char		part[TENANCY_UUID_STRLEN + 3];	/* room for braces */
	char		canonical[2 * TENANCY_UUID_STRLEN + 2];
	pg_uuid_t	tenant;
	pg_uuid_t	key;

	if (*newval != NULL && **newval != '\0')
	{
		colon = strchr(*newval, ':');
		if (colon == NULL || colon - *newval > TENANCY_UUID_STRLEN + 2)
			colon = NULL;
		else
		{
			memcpy(part, *newval, colon - *newval);
			part[colon - *newval] = '\0';
		}
		if (colon == NULL || !tenancy_uuid_parse(part, &tenant) ||
			!tenancy_uuid_parse(colon + 1, &key))
		{
			GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
			GUC_check_errmsg("tenancy: tenancy.session_binding must be empty or \"<tenant uuid>:<key uuid>\"");
			GUC_check_errhint("Let tenancy.authenticate() and tenancy.logout() manage it.");
			return false;
		}
		tenancy_uuid_format(&tenant, canonical);
		canonical[TENANCY_UUID_STRLEN] = ':';
		tenancy_uuid_format(&key, canonical + TENANCY_UUID_STRLEN + 1);
		if (strcmp(canonical, *newval) != 0)
		{
			char	   *copy = tenancy_guc_strdup(canonical);

			if (copy == NULL)
				return false;
			tenancy_guc_free(*newval);
			*newval = copy;
		}
	}
	if (source == PGC_S_DEFAULT || InitializingParallelWorker)
		return true;
	return check_not_restricted("tenancy.session_binding");
}

/*
 * tenancy.context_checked: set by context.c (never by users) to the context
 * it validated in this transaction, so that parallel workers use that
 * validation instead of repeating it against a later snapshot.
 */
static void
assign_context_checked(const char *newval, void *extra)
{
	tenancy_context_checked_assigned();
}

/*
 * Accept '' or a valid interval that is not negative, without raising:
 * ParseDateTime and DecodeInterval report errors through their return codes.
 */
static bool
check_interval_setting(char **newval, void **extra, GucSource source)
{
	char		workbuf[256];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	int			dterr;
	struct pg_itm_in itm;

	if (*newval == NULL || **newval == '\0')
		return true;
	dterr = ParseDateTime(*newval, workbuf, sizeof(workbuf), field, ftype,
						  MAXDATEFIELDS, &nf);
	if (dterr == 0)
		dterr = DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE, &dtype, &itm);
	if (dterr == DTERR_BAD_FORMAT)
		dterr = DecodeISO8601Interval(*newval, &dtype, &itm);
	if (dterr != 0 || dtype != DTK_DELTA)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("\"%s\" is not an interval.", *newval);
		GUC_check_errhint("Use an interval such as '30 days', or '' for never.");
		return false;
	}
	/* A negative age would remove what the same run just wrote. */
	if (itm.tm_usec < 0 || itm.tm_mday < 0 || itm.tm_mon < 0 || itm.tm_year < 0)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("\"%s\" has a negative part.", *newval);
		GUC_check_errhint("Use an interval such as '30 days', '0' for at once, or '' for never.");
		return false;
	}
	return true;
}

/* Define every configuration variable of tenancy.  Called from _PG_init. */
void
tenancy_guc_init(void)
{
	DefineCustomStringVariable("app.tenant_id",
							   "The tenant this session or transaction acts for.",
							   "A tenant uuid, or '' for none.",
							   &tenancy_guc_tenant_id,
							   "",
							   PGC_USERSET,
							   0,
							   check_app_tenant_id,
							   assign_app_tenant_id,
							   NULL);

	DefineCustomStringVariable("tenancy.default_tenant",
							   "The tenant used when app.tenant_id is empty.",
							   "'' (the default) means there is none: access without a context fails.",
							   &tenancy_guc_default_tenant,
							   "",
							   PGC_SUSET,
							   0,
							   check_default_tenant,
							   assign_default_tenant,
							   NULL);

	DefineCustomStringVariable("tenancy.session_binding",
							   "The API key this session is bound to (set by tenancy.authenticate).",
							   NULL,
							   &tenancy_guc_session_binding,
							   "",
							   PGC_SUSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							   check_session_binding,
							   assign_session_binding,
							   NULL);

	DefineCustomStringVariable("tenancy.context_checked",
							   "The tenant context validated in this transaction (internal, for parallel workers).",
							   NULL,
							   &tenancy_guc_context_checked,
							   "",
							   PGC_SUSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							   NULL,
							   assign_context_checked,
							   NULL);

	DefineCustomBoolVariable("tenancy.auto_protect",
							 "Protect new tables that have a uuid column named tenant_id.",
							 NULL,
							 &tenancy_guc_auto_protect,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomRealVariable("tenancy.soft_limit_ratio",
							 "Share of a quota from which its health is 'warning'.",
							 NULL,
							 &tenancy_guc_soft_limit_ratio,
							 0.8, 0.0, 1.0,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("tenancy.purge_after",
							   "How long deleted tenants are kept before run_maintenance() purges them.",
							   "'' means never.",
							   &tenancy_guc_purge_after,
							   "30 days",
							   PGC_SUSET,
							   0,
							   check_interval_setting, NULL, NULL);

	DefineCustomStringVariable("tenancy.audit_retention",
							   "How long audit log rows are kept by run_maintenance().",
							   "'' means forever.",
							   &tenancy_guc_audit_retention,
							   "90 days",
							   PGC_SUSET,
							   0,
							   check_interval_setting, NULL, NULL);

	DefineCustomIntVariable("tenancy.usage_flush_delay",
							"How long recorded usage may wait in shared memory before a commit writes it.",
							"0 writes them at the commit of the transaction that recorded them.",
							&tenancy_guc_usage_flush_delay,
							1000, 0, 60000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	/* Quota area: the size of the table of rate limit buckets. */
	DefineCustomIntVariable("tenancy.max_rate_buckets",
							"How many rate limit buckets shared memory holds.",
							"One per tenant and resource being rate limited; full buckets are dropped when it runs out.",
							&tenancy_guc_max_rate_buckets,
							10000, 16, 1000000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	/* Quota area: the commit of a transaction that only changed quota usage. */
	DefineCustomBoolVariable("tenancy.synchronous_quota_commit",
							 "Makes a transaction that only changed quota usage wait for its WAL flush at commit.",
							 "Off: such a transaction commits as with synchronous_commit = off. On: as synchronous_commit says.",
							 &tenancy_guc_synchronous_quota_commit,
							 false,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	/* Quota area: how long quota-only deltas may wait in shared memory. */
	DefineCustomIntVariable("tenancy.quota_flush_delay",
							"How long the quota usage of a transaction that changed nothing else may wait in shared memory before a commit writes it to the ledger.",
							"0 writes it at the commit of the transaction that changed it.",
							&tenancy_guc_quota_flush_delay,
							200, 0, 60000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("tenancy");
}
