/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *		Rate limits: token buckets in shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "tenancy.h"

/* Shared memory of this area: none yet. */
Size
tenancy_ratelimit_shmem_size(void)
{
	return 0;
}

void
tenancy_ratelimit_shmem_startup(void)
{
}
