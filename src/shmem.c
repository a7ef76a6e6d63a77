/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory of tenancy: one request and one start-up for every
 *		area, as pg_stat_statements does it in PostgreSQL 15.
 *
 * Each area (quota.c, ratelimit.c, apikey.c, usage.c) says how much it
 * needs and initialises its own part; this file requests the sum in
 * shmem_request_hook and calls each start-up under AddinShmemInitLock in
 * shmem_startup_hook.  Both hooks chain to the previous ones.
 *
 * Locking protocol: each area documents its own in its file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "tenancy.h"

#ifdef TENANCY_HAVE_SHMEM_REQUEST_HOOK
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
tenancy_shmem_size(void)
{
	Size		size = 0;

	size = add_size(size, tenancy_quota_shmem_size());
	size = add_size(size, tenancy_ratelimit_shmem_size());
	size = add_size(size, tenancy_apikey_shmem_size());
	size = add_size(size, tenancy_usage_shmem_size());
	return size;
}

static void
tenancy_shmem_request(void)
{
#ifdef TENANCY_HAVE_SHMEM_REQUEST_HOOK
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(tenancy_shmem_size());
}

static void
tenancy_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	tenancy_quota_shmem_startup();
	tenancy_ratelimit_shmem_startup();
	tenancy_apikey_shmem_startup();
	tenancy_usage_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
}

/* Install the shared memory hooks.  Called from _PG_init. */
void
tenancy_shmem_init(void)
{
#ifdef TENANCY_HAVE_SHMEM_REQUEST_HOOK
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = tenancy_shmem_request;
#else
	tenancy_shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = tenancy_shmem_startup;
}
