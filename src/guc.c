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

#include <ctype.h>

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
bool		tenancy_guc_auto_protect = false;
double		tenancy_guc_soft_limit_ratio = 0.8;
char	   *tenancy_guc_purge_after = NULL;
char	   *tenancy_guc_audit_retention = NULL;

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
		if (!isxdigit((unsigned char) p[0]) || !isxdigit((unsigned char) p[1]))
			return false;
		hi = isdigit((unsigned char) p[0]) ? p[0] - '0' : (tolower((unsigned char) p[0]) - 'a' + 10);
		lo = isdigit((unsigned char) p[1]) ? p[1] - '0' : (tolower((unsigned char) p[1]) - 'a' + 10);
		out->data[digits / 2] = (unsigned char) ((hi << 4) | lo);
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
		free(*newval);
		*newval = copy;
	}
	return true;
}

/*
 * app.tenant_id: syntax first, then the privilege rule where it can be
 * judged.
 */
static bool
check_app_tenant_id(char **newval, void **extra, GucSource source)
{
	pg_uuid_t	uuid;

	if (*newval == NULL || **newval == '\0')
		return true;
	if (!check_uuid_syntax("app.tenant_id", newval, &uuid))
		return false;

	/* Parallel workers inherit the leader's context as it is. */
	if (source == PGC_S_DEFAULT || InitializingParallelWorker)
		return true;

	if (InSecurityRestrictedOperation())
	{
		GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
		GUC_check_errmsg("tenancy: app.tenant_id cannot be changed inside a security-restricted operation");
		return false;
	}

	/*
	 * Role membership can only be read inside a transaction.  Outside one
	 * (postgresql.conf on SIGHUP) the value is judged where it is used.
	 */
	if (IsTransactionState() && !tenancy_context_may_set(&uuid))
	{
		GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
		GUC_check_errmsg("tenancy: permission denied to set app.tenant_id");
		GUC_check_errdetail("Only superusers, members of tenancy_app or tenancy_admin, and a session authenticated by an API key of that tenant may act for a tenant.");
		GUC_check_errhint("Call tenancy.authenticate() with an API key of the tenant, or connect as a member of tenancy_app.");
		return false;
	}
	return true;
}

/* Any change of the context invalidates the per-transaction cache. */
static void
assign_context_setting(const char *newval, void *extra)
{
	tenancy_context_invalidate();
}

static bool
check_default_tenant(char **newval, void **extra, GucSource source)
{
	pg_uuid_t	uuid;

	if (*newval == NULL || **newval == '\0')
		return true;
	return check_uuid_syntax("tenancy.default_tenant", newval, &uuid);
}

/*
 * tenancy.session_binding is set only by tenancy.authenticate(), as
 * "<tenant uuid>:<key uuid>".  It is PGC_SUSET, so no other role can set
 * it, and it is restored in parallel workers with the other settings.
 */
static bool
check_session_binding(char **newval, void **extra, GucSource source)
{
	const char *colon;
	char		part[TENANCY_UUID_STRLEN + 1];
	pg_uuid_t	uuid;

	if (*newval == NULL || **newval == '\0')
		return true;
	colon = strchr(*newval, ':');
	if (colon == NULL || colon - *newval != TENANCY_UUID_STRLEN)
		return false;
	memcpy(part, *newval, TENANCY_UUID_STRLEN);
	part[TENANCY_UUID_STRLEN] = '\0';
	return tenancy_uuid_parse(part, &uuid) && tenancy_uuid_parse(colon + 1, &uuid);
}

/*
 * Accept '' or a valid interval, without raising: ParseDateTime and
 * DecodeInterval report errors through their return codes.
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
							   assign_context_setting,
							   NULL);

	DefineCustomStringVariable("tenancy.default_tenant",
							   "The tenant used when app.tenant_id is empty.",
							   "'' (the default) means there is none: access without a context fails.",
							   &tenancy_guc_default_tenant,
							   "",
							   PGC_SUSET,
							   0,
							   check_default_tenant,
							   assign_context_setting,
							   NULL);

	DefineCustomStringVariable("tenancy.session_binding",
							   "The API key this session is bound to (set by tenancy.authenticate).",
							   NULL,
							   &tenancy_guc_session_binding,
							   "",
							   PGC_SUSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							   check_session_binding,
							   assign_context_setting,
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

	/* Quota area: the size of the table of rate limit buckets. */
	DefineCustomIntVariable("tenancy.max_rate_buckets",
							"How many rate limit buckets shared memory holds.",
							"One per tenant and resource being rate limited; full buckets are dropped when it runs out.",
							&tenancy_guc_max_rate_buckets,
							10000, 16, 1000000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("tenancy");
}
