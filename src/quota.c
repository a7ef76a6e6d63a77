/*-------------------------------------------------------------------------
 *
 * quota.c
 *		Quotas: limits, usage counters and their reservations.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "tenancy.h"

/* Shared memory of this area: none yet. */
Size
tenancy_quota_shmem_size(void)
{
	return 0;
}

void
tenancy_quota_shmem_startup(void)
{
}
