/*-------------------------------------------------------------------------
 *
 * tenancy.c
 *		Module entry point of the tenancy extension.
 *
 * tenancy must be in shared_preload_libraries: it defines app.tenant_id
 * before any session can set it and (later) owns shared memory.  _PG_init
 * refuses to do anything when loaded any other way, and the install script
 * calls tenancy._assert_preloaded() first, so CREATE EXTENSION fails with
 * 55000 instead of half-working.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "tenancy.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(tenancy_assert_preloaded);

/* Set when _PG_init ran from shared_preload_libraries. */
bool		tenancy_preloaded = false;

void		_PG_init(void);

/*
 * Module load callback.  Does nothing unless preloaded: GUCs and hooks
 * defined by a late LOAD would give sessions a context that was never
 * checked at startup.
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;

	tenancy_guc_init();
	tenancy_shmem_init();
	/* callbacks run newest first: the quota ledger is written last */
	tenancy_commit_init();
	tenancy_quota_init();
	tenancy_context_init();
	tenancy_protect_init();
	tenancy_apikey_init();
	tenancy_usage_init();
	tenancy_preloaded = true;
}

/*
 * Raise 55000 when the library was not loaded by shared_preload_libraries
 * (for instance removed from it after CREATE EXTENSION): without it there
 * is no app.tenant_id to check, and no shared memory.
 */
void
tenancy_require_preloaded(void)
{
	if (!tenancy_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenancy: the tenancy library is not preloaded"),
				 errdetail("tenancy must be loaded at server start: it defines app.tenant_id and owns shared memory."),
				 errhint("Add tenancy to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* SQL: tenancy._assert_preloaded(), called by the install script. */
Datum
tenancy_assert_preloaded(PG_FUNCTION_ARGS)
{
	tenancy_require_preloaded();
	PG_RETURN_VOID();
}
