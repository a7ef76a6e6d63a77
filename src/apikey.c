/*-------------------------------------------------------------------------
 *
 * apikey.c
 *		API keys and the binding of a session to one.
 *
 * The binding itself is the setting tenancy.session_binding (guc.c), read
 * by context.c.  This file validates it once per transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "tenancy.h"

/* Shared memory of this area: none yet. */
Size
tenancy_apikey_shmem_size(void)
{
	return 0;
}

void
tenancy_apikey_shmem_startup(void)
{
}

/* Called from _PG_init: hooks of this area (none yet). */
void
tenancy_apikey_init(void)
{
}

/*
 * Check, once per transaction, that the key a session is bound to is still
 * valid.  Keys are not implemented yet: nothing to check.
 */
void
tenancy_apikey_validate_binding(const pg_uuid_t *tenant, const pg_uuid_t *key)
{
}
