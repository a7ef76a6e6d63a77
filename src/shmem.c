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
 * This file also owns a small common header: the "limits generation", a
 * counter that administrative changes of quota limits, plans and rate
 * limits bump (at once and again when their transaction ends), so that
 * every backend can cache limits and know, with one atomic read, when to
 * look them up again.
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
 *	Other areas document their own locks in their files.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "tenancy.h"

#ifdef TENANCY_HAVE_SHMEM_REQUEST_HOOK
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

typedef struct TenancySharedHeader
{
	pg_atomic_uint64 generation;	/* bumped when limits change */
} TenancySharedHeader;

static TenancySharedHeader *shared_header = NULL;

/* The LWLocks of the named tranche, once attached. */
static LWLockPadded *tenancy_locks = NULL;

static Size
tenancy_shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(TenancySharedHeader));

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
	tenancy_locks = GetNamedLWLockTranche("tenancy");
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
