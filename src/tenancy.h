/*-------------------------------------------------------------------------
 *
 * tenancy.h
 *		Shared declarations of the tenancy extension, grouped by the file
 *		that defines them, and the extension's own SQLSTATEs.
 *
 *-------------------------------------------------------------------------
 */
#ifndef TENANCY_H
#define TENANCY_H

#include "postgres.h"

#include "access/attnum.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "fmgr.h"
#include "utils/elog.h"
#include "utils/uuid.h"

#include "compat.h"

/*
 * SQLSTATEs of SPEC section 8 that PostgreSQL does not define.  Everything
 * else uses core's codes (42501, 28000, 22023, 55000).
 */
#define ERRCODE_TENANCY_NO_CONTEXT			MAKE_SQLSTATE('T','N','0','0','1')
#define ERRCODE_TENANCY_UNKNOWN_TENANT		MAKE_SQLSTATE('T','N','0','0','2')
#define ERRCODE_TENANCY_TENANT_NOT_ACTIVE	MAKE_SQLSTATE('T','N','0','0','3')
#define ERRCODE_TENANCY_QUOTA_EXCEEDED		MAKE_SQLSTATE('T','Q','0','0','1')
#define ERRCODE_TENANCY_RATE_LIMITED		MAKE_SQLSTATE('T','Q','0','0','2')

/* Length of a uuid in canonical text form, without the terminator. */
#define TENANCY_UUID_STRLEN 36

/*
 * The advisory locks tenancy takes for itself (storage/lock.h's
 * SET_LOCKTAG_ADVISORY: database, what, which, class).  Their class (field4
 * of the tag, objsubid in pg_locks) is TENANCY_LOCKTAG_CLASS, a value the
 * SQL advisory lock functions never produce (pg_advisory_lock() and its
 * kin use 1 for a bigint key and 2 for two int4 keys, as Citus keeps its
 * own classes apart), so no session can take or block them with those.
 */
#define TENANCY_LOCKTAG_CLASS	0x746E		/* 'tn' */
#define TENANCY_LOCK_API_KEYS	0x74716b31	/* 'tqk1': one tenant's api_keys
											 * quota, which = tenant hash */
#define TENANCY_LOCK_ROLLUP		0x74757231	/* 'tur1': rollup_usage(), which = 0 */
#define TENANCY_LOCK_QUOTA_NAMES	0x74716e31	/* 'tqn1': the rows:<table> names
												 * of limits, which = 0 */
#define TENANCY_SET_LOCKTAG(tag, what, which) \
	SET_LOCKTAG_ADVISORY((tag), MyDatabaseId, (what), (which), TENANCY_LOCKTAG_CLASS)

/* tenancy.c */
extern bool tenancy_preloaded;
extern void tenancy_require_preloaded(void);

/* guc.c */
extern char *tenancy_guc_tenant_id;
extern char *tenancy_guc_default_tenant;
extern char *tenancy_guc_session_binding;
extern char *tenancy_guc_context_checked;
extern bool tenancy_guc_auto_protect;
extern double tenancy_guc_soft_limit_ratio;
extern char *tenancy_guc_purge_after;
extern char *tenancy_guc_audit_retention;
extern int	tenancy_guc_usage_flush_delay;
extern void tenancy_guc_init(void);
extern bool tenancy_uuid_parse(const char *str, pg_uuid_t *out);
extern void tenancy_uuid_format(const pg_uuid_t *uuid, char *buf);

/* context.c */
extern void tenancy_context_init(void);
extern void tenancy_context_invalidate(void);
extern void tenancy_context_assigned(const char *oldval, const char *newval);
extern void tenancy_context_checked_assigned(void);
extern bool tenancy_context_role_may_set_any(Oid roleid);
extern bool tenancy_context_may_set(const pg_uuid_t *tenant);
extern bool tenancy_context_is_admin(void);
extern bool tenancy_context_binding(pg_uuid_t *tenant, pg_uuid_t *key);
extern const pg_uuid_t *tenancy_context_current(void);
extern bool tenancy_context_claimed(pg_uuid_t *tenant);
extern bool tenancy_context_leader_checked(void);
extern void tenancy_context_require_own(const pg_uuid_t *tenant);

/* protect.c */
extern void tenancy_protect_init(void);

/* refs.c: references between tenancy's tables, and who writes a table */
typedef enum TenancyTopWrite
{
	TENANCY_TOP_NONE,
	TENANCY_TOP_COPY,			/* COPY FROM */
	TENANCY_TOP_INSERT,
	TENANCY_TOP_MODIFY,			/* UPDATE, DELETE, MERGE */
	TENANCY_TOP_TRUNCATE
} TenancyTopWrite;
extern TenancyTopWrite tenancy_top_level_write(Oid relid);

/* tenant.c */
typedef struct TenancyTenant
{
	pg_uuid_t	id;
	char		slug[NAMEDATALEN];
	char		status[16];			/* effective: active, suspended, deleted,
									 * expired */
} TenancyTenant;

extern Oid tenancy_relation_oid(const char *relname, bool missing_ok);
extern Oid tenancy_relation_owner(Oid relid, bool missing_ok);
extern bool tenancy_fetch_unique(Oid relid, Oid indexid, AttrNumber attno,
								 RegProcedure eqproc, Oid collation, Datum value,
								 bool fresh,
								 void (*convert) (HeapTuple tuple, TupleDesc desc, void *out),
								 void *out);
extern bool tenancy_tenant_lookup(const pg_uuid_t *id, TenancyTenant *out);

/* The last tenant tenancy_tenant_exists_seen() looked up. */
typedef struct TenancySeenTenant
{
	bool		valid;
	bool		exists;
	pg_uuid_t	id;
} TenancySeenTenant;
extern bool tenancy_tenant_exists_seen(const pg_uuid_t *id, TenancySeenTenant *seen);
extern void tenancy_tenant_resolve(const char *tenant, TenancyTenant *out);
extern bool tenancy_tenant_try_resolve(const char *tenant, TenancyTenant *out);

/* shmem.c: shared memory of every area (owned by the quota area) */
extern void tenancy_shmem_init(void);
extern bool tenancy_shmem_attached(void);
extern void tenancy_shmem_require(void);
extern uint64 tenancy_shmem_generation(void);
extern void tenancy_shmem_bump_generation(void);
extern void tenancy_shmem_publish_tenant(const pg_uuid_t *tenant);
extern int	tenancy_shmem_wait_for_writers(const pg_uuid_t *tenant);
extern struct HTAB *tenancy_generation_cache(struct HTAB **cache, uint64 *cache_gen,
											   const char *name, Size keysize,
											   Size entrysize);
#define TENANCY_LOCK_QUOTA	0
#define TENANCY_LOCK_RATE	1
#define TENANCY_LWLOCKS		2
extern struct LWLock *tenancy_shmem_lock(int which);

/* quota.c: quota limits, shared usage counters and their reservations */
#define TENANCY_RESOURCE_LEN 160	/* longest resource name + 1 */
extern Size tenancy_quota_shmem_size(void);
extern void tenancy_quota_shmem_startup(void);
extern void tenancy_quota_init(void);
extern bool tenancy_guc_synchronous_quota_commit;
extern int	tenancy_guc_quota_flush_delay;
extern void tenancy_quota_request_flush(void);
extern void tenancy_quota_resource_arg(FunctionCallInfo fcinfo, int argno,
									   char *out);
extern bool tenancy_quota_tenant_arg(FunctionCallInfo fcinfo, int argno,
									 pg_uuid_t *out);
extern void tenancy_quota_add(const pg_uuid_t *tenant, const char *resource,
							  Oid relid, int64 delta, bool enforce);
extern void tenancy_quota_forget_relation(Oid relid);
extern void tenancy_quota_rename(Oid root, const char *from, const char *to);
extern char *tenancy_display_resource(const char *resource);
extern void tenancy_quota_forget_database(void);

/* What a statement remembers between rows about one counter it changes. */
typedef struct TenancyQuotaCache
{
	bool		valid;
	uint64		version;		/* of this backend's records */
	uint64		gen;			/* limits generation */
	SubTransactionId subid;
	Oid			relid;
	int			index;			/* of the record */
	pg_uuid_t	tenant;
	bool		has_limit;
	int64		limit;
} TenancyQuotaCache;
extern void tenancy_quota_add_cached(TenancyQuotaCache *c, const pg_uuid_t *tenant,
									 const char *resource, Oid relid,
									 int64 delta, bool enforce);

/* quota_count.c: the counting triggers of protected tables */
extern Oid	tenancy_quota_rows_root(Oid relid);
extern void tenancy_quota_rows_name(Oid relid, char *out);

/* ratelimit.c: token buckets */
extern int	tenancy_guc_max_rate_buckets;
extern Size tenancy_ratelimit_shmem_size(void);
extern void tenancy_ratelimit_shmem_startup(void);
extern void tenancy_ratelimit_forget_database(void);

/* apikey.c: API keys and the binding of a session to one */
#define TENANCY_KEY_READ	0x01
#define TENANCY_KEY_WRITE	0x02
#define TENANCY_KEY_ADMIN	0x04

/* The validated key a session is bound to (valid until the transaction ends). */
typedef struct TenancyKeyBinding
{
	pg_uuid_t	tenant;
	pg_uuid_t	key;
	int			permissions;	/* TENANCY_KEY_* bits */
	int			nscopes;		/* 0: every protected table */
	char	  **scopes;
} TenancyKeyBinding;

extern void tenancy_apikey_init(void);
extern void tenancy_apikey_validate_binding(const pg_uuid_t *tenant,
											const pg_uuid_t *key);
extern const TenancyKeyBinding *tenancy_apikey_binding(void);

/* keyperm.c: what a bound session may do with protected tables */
extern void tenancy_keyperm_init(void);

/* commit.c: commits that only wrote tenancy's bookkeeping */
extern void tenancy_commit_init(void);
extern void tenancy_commit_write_begin(void);
extern void tenancy_commit_write_end(bool may_be_lost);
extern bool tenancy_commit_only_bookkeeping(void);
extern void tenancy_at_exit(bool (*needed) (void), void (*work) (void));

/* usage.c: usage metering */
#define TENANCY_RESOURCE_MAXLEN 255	/* bytes of a resource name */
extern Size tenancy_usage_shmem_size(void);
extern void tenancy_usage_shmem_startup(void);
extern void tenancy_usage_forget_database(void);
extern void tenancy_usage_init(void);
extern void tenancy_usage_record(const pg_uuid_t *tenant, const char *resource,
								 int64 amount, bool survive_abort);
extern bool tenancy_usage_resource_ok(const char *resource);
extern void tenancy_usage_count(const char *name, int64 amount);
extern int64 tenancy_usage_counter(const char *name);
extern void tenancy_usage_record_rows(Oid relid, const pg_uuid_t *tenant,
									  int64 inserted, int64 deleted);

#endif							/* TENANCY_H */
