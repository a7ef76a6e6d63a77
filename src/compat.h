/*-------------------------------------------------------------------------
 *
 * compat.h
 *		The PostgreSQL version guard and the few shims tenancy needs.
 *
 * tenancy targets PostgreSQL 15 and is written so that 13-17 cost little.
 * Every #if on PG_VERSION_NUM lives here, never in a .c file.
 *
 *-------------------------------------------------------------------------
 */
#ifndef TENANCY_COMPAT_H
#define TENANCY_COMPAT_H

#if PG_VERSION_NUM < 130000
#error "tenancy requires PostgreSQL 13 or later"
#endif

/*
 * shmem_request_hook appeared in 15; before it, RequestAddinShmemSpace was
 * called straight from _PG_init.
 */
#if PG_VERSION_NUM >= 150000
#define TENANCY_HAVE_SHMEM_REQUEST_HOOK 1
#endif

/*
 * The number of backends that may run transactions (MaxBackends is known
 * in shmem_request_hook from 15 on, not yet in _PG_init before), and this
 * backend's PGPROC number (MyProcNumber from 17 on).
 */
#if PG_VERSION_NUM >= 150000
#define TENANCY_MAX_BACKENDS() MaxBackends
#else
#define TENANCY_MAX_BACKENDS() \
	(MaxConnections + autovacuum_max_workers + 1 + max_worker_processes + max_wal_senders)
#endif
#if PG_VERSION_NUM >= 170000
#define TENANCY_MY_PROCNO MyProcNumber
#else
#define TENANCY_MY_PROCNO (MyProc->pgprocno)
#endif

/* MarkGUCPrefixReserved is 15's name for EmitWarningsOnPlaceholders. */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(prefix) EmitWarningsOnPlaceholders(prefix)
#endif

/* Ownership checks were renamed in 16. */
#if PG_VERSION_NUM >= 160000
#define tenancy_class_ownercheck(relid, roleid) \
	object_ownercheck(RelationRelationId, (relid), (roleid))
#else
#define tenancy_class_ownercheck(relid, roleid) pg_class_ownercheck((relid), (roleid))
#endif

/*
 * A GUC check hook that replaces *newval must hand back memory the GUC
 * machinery can free: malloc before 16, guc_malloc from 16 on.
 */
#if PG_VERSION_NUM >= 160000
#define tenancy_guc_strdup(s) guc_strdup(LOG, (s))
#define tenancy_guc_free(p) guc_free(p)
#else
#define tenancy_guc_strdup(s) strdup(s)
#define tenancy_guc_free(p) free(p)
#endif

/*
 * ExecutorCheckPerms_hook (apikey area, keyperm.c): from 16 on it receives
 * the RTEPermissionInfo list; before, the range table.  The hook walks
 * TENANCY_PERMS_LIST, whose elements have relid and requiredPerms.
 * TENANCY_PLAN_PERMS is the same list of a PlannedStmt (context.c).
 */
#if PG_VERSION_NUM >= 160000
#define TENANCY_PERMS_HOOK_PARAMS List *rangeTable, List *rtePermInfos, bool ereport_on_violation
#define TENANCY_PERMS_HOOK_CHAIN(hook) (hook)(rangeTable, rtePermInfos, ereport_on_violation)
#define TENANCY_PERMS_LIST rtePermInfos
#define TenancyPermInfo RTEPermissionInfo
#define TENANCY_PERMINFO_IS_RELATION(p) true
#define TENANCY_PLAN_PERMS(stmt) ((stmt)->permInfos)
#else
#define TENANCY_PERMS_HOOK_PARAMS List *rangeTable, bool ereport_on_violation
#define TENANCY_PERMS_HOOK_CHAIN(hook) (hook)(rangeTable, ereport_on_violation)
#define TENANCY_PERMS_LIST rangeTable
#define TenancyPermInfo RangeTblEntry
#define TENANCY_PERMINFO_IS_RELATION(p) ((p)->rtekind == RTE_RELATION)
#define TENANCY_PLAN_PERMS(stmt) ((stmt)->rtable)
#endif

/*
 * SHA-256 of a buffer into out (PG_SHA256_DIGEST_LENGTH bytes); false on
 * failure.  The cryptohash API appeared in 14; 13 has pg_sha256_*.
 */
#if PG_VERSION_NUM >= 140000
#include "common/cryptohash.h"
#include "common/sha2.h"
static inline bool
tenancy_sha256(const uint8 *data, size_t len, uint8 *out)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	bool		ok;

	ok = ctx != NULL &&
		pg_cryptohash_init(ctx) == 0 &&
		pg_cryptohash_update(ctx, data, len) == 0 &&
		pg_cryptohash_final(ctx, out, PG_SHA256_DIGEST_LENGTH) == 0;
	pg_cryptohash_free(ctx);
	return ok;
}
#else
#include "common/sha2.h"
static inline bool
tenancy_sha256(const uint8 *data, size_t len, uint8 *out)
{
	pg_sha256_ctx ctx;

	pg_sha256_init(&ctx);
	pg_sha256_update(&ctx, data, len);
	pg_sha256_final(&ctx, out);
	return true;
}
#endif

#endif							/* TENANCY_COMPAT_H */
