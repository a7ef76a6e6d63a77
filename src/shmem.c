/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory of tenancy: one request and one start-up for every
 *		area, as pg_stat_statements does it in PostgreSQL 15.
 *
 * Each area (quota.c, ratelimit.c, usage.c) says how much it
 * needs and initialises its own part; this file requests the sum in
 * shmem_request_hook and calls each start-up under AddinShmemInitLock in
 * shmem_startup_hook.  Both hooks chain to the previous ones.
 *
 * This file also owns a small common header: the "limits generation", a
 * counter that administrative changes of quota limits, plans and rate
 * limits bump (at once and again when their transaction ends), so that
 * every backend can cache limits and know, with one atomic read, when to
 * look them up again.
 *
 * It also owns the "tenant writers" array: one slot per backend (indexed
 * by its PGPROC number) naming the virtual transaction id of the backend's
 * latest transaction that validated a tenant context, and that tenant.  A
 * transaction may write rows of a protected table only for the tenant its
 * context validated, so purge_tenant() waits, before it deletes, for every
 * transaction whose slot names the tenant (or, when one transaction
 * validated several tenants, any tenant).
 *
 * Shared memory outlives an extension dropped from a database: when
 * tenancy is created in a database, tenancy._forget_database_state() has
 * every area drop what it keeps for that database.
 *
 * Locking protocol:
 *	- The named LWLock tranche "tenancy" holds TENANCY_LWLOCKS locks:
 *	  TENANCY_LOCK_QUOTA guards the hash table of quota counters (quota.c),
 *	  TENANCY_LOCK_RATE the hash table of token buckets (ratelimit.c).
 *	  Look-ups take them LW_SHARED, insertions and evictions LW_EXCLUSIVE
 *	  (with a re-look-up after the upgrade).
 *	- Counters inside an entry are guarded by the entry's own spinlock,
 *	  taken for a few instructions only, never while calling anything that
 *	  can fail.  A spinlock may be taken while holding an LWLock, never
 *	  the other way round.
 *	- The generation counter is a 64-bit atomic: no lock.
 *	- A writer slot is written only by its own backend, once per
 *	  transaction, without a lock: it first clears the virtual transaction
 *	  id, then writes the tenant, then the id, with write barriers between,
 *	  and ends with a full barrier (before it reads the tenant's status).
 *	  A reader (purge_tenant, after it locked the deleted tenant's row and
 *	  issued a full barrier) may see a slot being written half-way; that
 *	  slot's transaction is only now validating its context, so it reads
 *	  the tenant's status after the purge locked it as deleted, and fails.
 *	  A torn id at worst makes the reader wait for an unrelated transaction.
 *	Other areas document their own locks in their files.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/parallel.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "postmaster/autovacuum.h"
#include "replication/walsender.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_forget_database_state);

#ifdef TENANCY_HAVE_SHMEM_REQUEST_HOOK
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

typedef struct TenancySharedHeader
{
	pg_atomic_uint64 generation;	/* bumped when limits change */
} TenancySharedHeader;

static TenancySharedHeader *shared_header = NULL;

/* One backend's latest transaction that validated a tenant context. */
typedef struct TenancyWriterSlot
{
	VirtualTransactionId vxid;	/* invalid while being written */
	bool		many;			/* it validated more than one tenant */
	pg_uuid_t	tenant;
} TenancyWriterSlot;

typedef struct TenancyWriters
{
	int			count;
	TenancyWriterSlot slots[FLEXIBLE_ARRAY_MEMBER];
} TenancyWriters;

static TenancyWriters *writers = NULL;

/* Size of the writers array: a slot for every backend that runs transactions. */
static Size
writers_size(void)
{
	return add_size(offsetof(TenancyWriters, slots),
					mul_size(TENANCY_MAX_BACKENDS(), sizeof(TenancyWriterSlot)));
}

/* The LWLocks of the named tranche, once attached. */
static LWLockPadded *tenancy_locks = NULL;

static Size
tenancy_shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(TenancySharedHeader));

	size = add_size(size, MAXALIGN(writers_size()));
	size = add_size(size, tenancy_quota_shmem_size());
	size = add_size(size, tenancy_ratelimit_shmem_size());
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
	RequestNamedLWLockTranche("tenancy", TENANCY_LWLOCKS);
}

static void
tenancy_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared_header = ShmemInitStruct("tenancy header", sizeof(TenancySharedHeader), &found);
	if (!found)
		pg_atomic_init_u64(&shared_header->generation, 1);
	writers = ShmemInitStruct("tenancy writers", writers_size(), &found);
	if (!found)
	{
		memset(writers, 0, writers_size());
		writers->count = TENANCY_MAX_BACKENDS();
	}
	tenancy_locks = GetNamedLWLockTranche("tenancy");
	tenancy_quota_shmem_startup();
	tenancy_ratelimit_shmem_startup();
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

/* Is tenancy's shared memory attached in this process? */
bool
tenancy_shmem_attached(void)
{
	return shared_header != NULL;
}

/*
 * Raise 55000 unless shared memory is attached.  Every SQL entry point that
 * uses shared memory calls this first.
 */
void
tenancy_shmem_require(void)
{
	if (shared_header == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenancy: shared memory is not attached"),
				 errdetail("Quotas and rate limits live in shared memory that tenancy allocates at server start."),
				 errhint("Add tenancy to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * SQL: tenancy._forget_database_state(), called by the install script.
 * Shared memory outlives an extension dropped from a database: quota
 * counters (and their deltas waiting to be written), waiting usage sums
 * and rate buckets of the database, and the limits backends cached, would
 * come back in a tenancy created again there (by CREATE EXTENSION or a
 * pg_restore), where the new tables are the truth.  They go; the limits
 * generation moves on.  (Tenant and key caches follow the relcache
 * invalidations of the dropped tables.)  Only while tenancy is being
 * created: at any other time it would lose committed usage.
 */
Datum
tenancy_forget_database_state(PG_FUNCTION_ARGS)
{
	tenancy_shmem_require();
	if (!creating_extension || CurrentExtensionObject != get_extension_oid("tenancy", true))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenancy: shared state is forgotten only while the extension is created"),
				 errdetail("Forgetting it at another time would lose committed quota usage."),
				 errhint("Do not call tenancy._forget_database_state(): CREATE EXTENSION tenancy does.")));
	tenancy_quota_forget_database();
	tenancy_usage_forget_database();
	tenancy_ratelimit_forget_database();
	tenancy_shmem_bump_generation();
	PG_RETURN_VOID();
}

/* One of the tranche's LWLocks (TENANCY_LOCK_*). */
LWLock *
tenancy_shmem_lock(int which)
{
	Assert(tenancy_locks != NULL && which >= 0 && which < TENANCY_LWLOCKS);
	return &tenancy_locks[which].lock;
}

/* The current limits generation (0 when shared memory is missing). */
uint64
tenancy_shmem_generation(void)
{
	return shared_header ? pg_atomic_read_u64(&shared_header->generation) : 0;
}

/*
 * A backend-local hash (in TopMemoryContext, blob keys) of what was read
 * for the current limits generation: *cache is emptied, by being made
 * anew, whenever the generation moved on since *cache_gen.
 */
HTAB *
tenancy_generation_cache(HTAB **cache, uint64 *cache_gen, const char *name,
						 Size keysize, Size entrysize)
{
	uint64		gen = tenancy_shmem_generation();

	if (*cache == NULL || *cache_gen != gen)
	{
		HASHCTL		info;

		if (*cache)
			hash_destroy(*cache);
		memset(&info, 0, sizeof(info));
		info.keysize = keysize;
		info.entrysize = entrysize;
		info.hcxt = TopMemoryContext;
		*cache = hash_create(name, 64, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		*cache_gen = gen;
	}
	return *cache;
}

/* Tell every backend that limits may have changed. */
void
tenancy_shmem_bump_generation(void)
{
	if (shared_header)
		pg_atomic_fetch_add_u64(&shared_header->generation, 1);
}

/*
 * Publish that the current transaction validated a context for tenant: see
 * the file header.  Called where the context is validated (once per
 * transaction and context), before the tenant's status is read.  Not in
 * parallel workers: they cannot write, and their leader published.
 */
void
tenancy_shmem_publish_tenant(const pg_uuid_t *tenant)
{
	TenancyWriterSlot *slot;
	VirtualTransactionId vxid;

	if (writers == NULL || MyProc == NULL || IsParallelWorker() ||
		TENANCY_MY_PROCNO < 0 || TENANCY_MY_PROCNO >= writers->count)
		return;
	slot = &writers->slots[TENANCY_MY_PROCNO];
	GET_VXID_FROM_PGPROC(vxid, *MyProc);
	if (VirtualTransactionIdEquals(slot->vxid, vxid))
	{
		/* Another tenant in the same transaction: any tenant, from now on. */
		if (!slot->many && memcmp(slot->tenant.data, tenant->data, UUID_LEN) != 0)
			slot->many = true;
	}
	else
	{
		slot->vxid.localTransactionId = InvalidLocalTransactionId;
		pg_write_barrier();
		memcpy(&slot->tenant, tenant, sizeof(pg_uuid_t));
		slot->many = false;
		pg_write_barrier();
		slot->vxid = vxid;
	}
	pg_memory_barrier();
}

/*
 * Wait until every other transaction that may still write rows of tenant
 * has ended: those whose slot names it, or names more than one tenant.
 * The caller holds the lock on the tenant's row, so no transaction starts
 * validating this tenant successfully meanwhile.  Returns how many
 * transactions were waited for.  Interruptible; the lock manager's
 * deadlock detection covers the waits.
 */
int
tenancy_shmem_wait_for_writers(const pg_uuid_t *tenant)
{
	int			waited = 0;
	int			i;

	if (writers == NULL)
		return 0;
	pg_memory_barrier();
	for (i = 0; i < writers->count; i++)
	{
		TenancyWriterSlot *slot = &writers->slots[i];
		VirtualTransactionId vxid;
		bool		match;

		if (i == TENANCY_MY_PROCNO)
			continue;
		vxid = slot->vxid;
		if (!VirtualTransactionIdIsValid(vxid))
			continue;
		pg_read_barrier();
		match = slot->many || memcmp(slot->tenant.data, tenant->data, UUID_LEN) == 0;
		if (!match)
			continue;
		CHECK_FOR_INTERRUPTS();
		/* Returns at once when that transaction has already ended. */
		if (!VirtualXactLock(vxid, false))
		{
			(void) VirtualXactLock(vxid, true);
			waited++;
		}
	}
	return waited;
}
