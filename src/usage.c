/*-------------------------------------------------------------------------
 *
 * usage.c
 *		Usage metering.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "tenancy.h"

/* Shared memory of this area: none yet. */
Size
tenancy_usage_shmem_size(void)
{
	return 0;
}

void
tenancy_usage_shmem_startup(void)
{
}

/* Called from _PG_init: hooks of this area (none yet). */
void
tenancy_usage_init(void)
{
}

/*
 * Record usage of a resource by a tenant.  With survive_abort, the record
 * outlives the rollback of the current transaction (denial meters).
 * Not implemented yet: records nothing.
 */
void
tenancy_usage_record(const pg_uuid_t *tenant, const char *resource,
					 int64 amount, bool survive_abort)
{
}
