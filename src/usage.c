/*-------------------------------------------------------------------------
 *
 * usage.c
 *		Usage metering: record_usage(), the meters other areas call through
 *		tenancy_usage_record(), usage(), the denial counters of
 *		tenancy.stats, and the append-only guard of tenancy.audit_log.
 *
 * Transactional records (record_usage, consumed quotas, rows inserted...)
 * are summed in backend memory, keyed by tenant, resource and
 * subtransaction nesting level: a transaction that records a resource
 * 100,000 times keeps one sum, a rolled-back transaction keeps nothing, and
 * a rolled-back subtransaction drops exactly what it recorded (its level's
 * entries; a committed subtransaction's entries are merged into its
 * parent's level).
 *
 * When the transaction commits, its sums are not written by it: they are
 * added to "waiting" sums in shared memory, keyed by database, tenant,
 * resource and UTC hour (with the time of their first record).  So
 * recording usage never turns a read-only request into a writing one.
 * Records that must survive the rollback of their transaction (quota and
 * rate-limit denials) are added there at once, when recorded; they are
 * also added to counters by database and resource, which tenancy.stats
 * reads (for the current database only), as are the authentication
 * failures of apikey.c (tenancy_usage_count()).
 *
 * Every sum saturates at PG_INT64_MAX instead of wrapping: in backend
 * memory, in shared memory, and in SQL (rollup_usage(), usage()), so that
 * no amount a tenant records can turn its own committed usage negative
 * (and have it dropped) or make a rollup overflow.
 *
 * Any backend of the database may write the waiting sums: it takes them
 * out of shared memory (remembering them, to put them back if its
 * transaction aborts) and inserts them into tenancy.usage_events in one
 * INSERT of a few array parameters.  That happens
 *	- at the PRE_COMMIT of a read-write transaction of a backend that added
 *	  sums tenancy.usage_flush_delay ago or more (so a busy backend writes
 *	  about once per delay, and takes every backend's sums with it);
 *	- in rollup_usage() (through tenancy._usage_flush()), so it folds
 *	  everything recorded, whichever session recorded it;
 *	- at the exit of a backend that added sums (disconnect, termination,
 *	  fast or smart shutdown), in a short transaction of its own;
 *	- with tenancy.usage_flush_delay = 0, at the PRE_COMMIT of the
 *	  recording transaction itself, with its own sums (not through shared
 *	  memory), so that nothing is ever lost.
 * Sums taken out of shared memory are written in the current transaction,
 * so that transaction must not be prepared (PREPARE TRANSACTION refuses
 * it, 0A000): a ROLLBACK PREPARED, in any session, could not put them
 * back.  A prepared transaction's own records are written in it.
 * usage() adds the waiting sums (and the current transaction's own) to
 * what it reads from the tables, so usage is visible to every session as
 * soon as the recording transaction committed.  While a transaction writes
 * sums, they are neither waiting nor visibly written: a reader in another
 * session may miss them for that moment, never counts them twice.  A crash
 * of the server loses the waiting sums (at most about
 * tenancy.usage_flush_delay of usage, plus what idle sessions recorded
 * since the last write).
 *
 * Shared memory: one struct with an LWLock (its own tranche) and two
 * hashes (fixed-size, zero-padded keys).  Adding: look-up under LW_SHARED,
 * then the entry's spinlock; insertion under LW_EXCLUSIVE with a
 * re-look-up (HASH_ENTER_NULL; a full denial-counter table counts into
 * "dropped"; when the waiting table is nearly full, a commit writes its
 * own sums itself).  Taking sums out and removing entries: LW_EXCLUSIVE.
 * Readers take LW_SHARED and each entry's spinlock.
 *
 * The audit log guard: a trigger refuses UPDATE, DELETE and TRUNCATE of
 * tenancy.audit_log unless tenancy._audit_purge() (the retention purge of
 * run_maintenance) has set a flag for the DELETE it runs; the flag is also
 * cleared at every transaction and subtransaction end.  The purge appends
 * an audit.purge row saying what it removed, whoever calls it.  DDL on the
 * table (ALTER TABLE in every form, renames, triggers, rules, policies) is
 * refused outside the extension's own scripts by an event trigger of its
 * own (tenancy._on_audit_ddl()).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_record_usage);
PG_FUNCTION_INFO_V1(tenancy_usage);
PG_FUNCTION_INFO_V1(tenancy_usage_flush);
PG_FUNCTION_INFO_V1(tenancy_usage_rollup_lock);
PG_FUNCTION_INFO_V1(tenancy_usage_counters);
PG_FUNCTION_INFO_V1(tenancy_usage_record_carried);
PG_FUNCTION_INFO_V1(tenancy_audit_guard);
PG_FUNCTION_INFO_V1(tenancy_audit_purge);
PG_FUNCTION_INFO_V1(tenancy_audit_ddl);

/*
 * Most shared counters (distinct database and counter name pairs: denial
 * resources, authentication failure causes) per server.
 */
#define USAGE_MAX_COUNTERS 4096

/* Most waiting (database, tenant, resource, hour) sums per server. */
#define USAGE_MAX_WAITING 16384

/* Free entries a commit wants left before it adds its sums there. */
#define USAGE_WAITING_MARGIN 1024

/* ---- transactional records ---- */

typedef struct PendingKey
{
	pg_uuid_t	tenant;
	int32		level;			/* subtransaction nesting level */
	char		resource[TENANCY_RESOURCE_MAXLEN + 1];	/* zero-padded */
} PendingKey;

typedef struct PendingEntry
{
	PendingKey	key;
	int64		amount;
} PendingEntry;

static MemoryContext usage_context = NULL;
static HTAB *pending = NULL;	/* NULL when empty */
static int	pending_max_level = 0;	/* deepest level with entries */

/* The saved INSERT of usage_events. */
static SPIPlanPtr insert_plan = NULL;

/* ---- shared memory ---- */

/* A shared sum: the part of every shared hash entry after its key. */
typedef struct SharedSum
{
	slock_t		mutex;
	int64		amount;
} SharedSum;

typedef struct UsageCounterKey
{
	Oid			dbid;
	char		resource[TENANCY_RESOURCE_MAXLEN + 1];	/* zero-padded */
} UsageCounterKey;

typedef struct UsageCounter
{
	UsageCounterKey key;
	SharedSum	sum;
} UsageCounter;

typedef struct WaitingKey
{
	Oid			dbid;
	pg_uuid_t	tenant;
	char		resource[TENANCY_RESOURCE_MAXLEN + 1];
	int64		hour;			/* UTC hours since the PostgreSQL epoch */
} WaitingKey;

typedef struct WaitingSum
{
	WaitingKey	key;
	SharedSum	sum;
	TimestampTz first_at;		/* first record (under the LWLock) */
} WaitingSum;

typedef struct UsageShared
{
	LWLock		lock;
	int			tranche;
	pg_atomic_uint64 dropped;	/* increments with no room in the hash */
} UsageShared;

static UsageShared *usage_shared = NULL;
static HTAB *usage_counters = NULL;
static HTAB *usage_waiting = NULL;

/* ---- this backend's part in the waiting sums ---- */

/* When this backend first added sums since it last wrote; 0: none. */
static TimestampTz added_since = 0;
static bool lost_logged = false;

/*
 * Sums the current transaction took out of shared memory to write (put
 * back if it aborts); the first `nwritten` of them are written.
 */
static WaitingSum *taken = NULL;
static int	ntaken = 0;
static int	nwritten = 0;
static int	taken_alloc = 0;

/* ---- audit guard ---- */

static bool audit_purge_allowed = false;

static void ensure_context(void);
static bool usage_flush(bool take_waiting);
static void ensure_exit_callback(void);

/* ------------------------------------------------------------------------
 * Shared memory
 * ------------------------------------------------------------------------
 */

Size
tenancy_usage_shmem_size(void)
{
	return add_size(add_size(MAXALIGN(sizeof(UsageShared)),
							 hash_estimate_size(USAGE_MAX_COUNTERS, sizeof(UsageCounter))),
					hash_estimate_size(USAGE_MAX_WAITING, sizeof(WaitingSum)));
}

/* Called under AddinShmemInitLock by shmem.c. */
void
tenancy_usage_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	usage_shared = ShmemInitStruct("tenancy usage", sizeof(UsageShared), &found);
	if (!found)
	{
		usage_shared->tranche = LWLockNewTrancheId();
		LWLockInitialize(&usage_shared->lock, usage_shared->tranche);
		pg_atomic_init_u64(&usage_shared->dropped, 0);
	}
	LWLockRegisterTranche(usage_shared->tranche, "tenancy_usage");

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(UsageCounterKey);
	info.entrysize = sizeof(UsageCounter);
	usage_counters = ShmemInitHash("tenancy usage counters",
								   USAGE_MAX_COUNTERS, USAGE_MAX_COUNTERS,
								   &info, HASH_ELEM | HASH_BLOBS);

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(WaitingKey);
	info.entrysize = sizeof(WaitingSum);
	usage_waiting = ShmemInitHash("tenancy waiting usage",
								  USAGE_MAX_WAITING, USAGE_MAX_WAITING,
								  &info, HASH_ELEM | HASH_BLOBS);
}

/*
 * CREATE EXTENSION tenancy (through tenancy._forget_database_state()):
 * the waiting sums of an earlier tenancy in this database go, rather than
 * be written into the new tables.
 */
void
tenancy_usage_forget_database(void)
{
	HASH_SEQ_STATUS status;
	WaitingSum *entry;

	if (usage_shared == NULL || usage_waiting == NULL)
		return;
	LWLockAcquire(&usage_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&status, usage_waiting);
	while ((entry = hash_seq_search(&status)) != NULL)
		if (entry->key.dbid == MyDatabaseId)
			hash_search(usage_waiting, &entry->key, HASH_REMOVE, NULL);
	LWLockRelease(&usage_shared->lock);
}

/* Raise 55000 unless this backend is attached to tenancy's shared memory. */
static void
require_shmem(void)
{
	if (usage_shared == NULL || usage_counters == NULL || usage_waiting == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenancy: shared memory is not attached"),
				 errhint("Add tenancy to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* a + b (both >= 0), saturating at PG_INT64_MAX instead of wrapping. */
static inline int64
add_saturating(int64 a, int64 b)
{
	int64		result;

	if (pg_add_s64_overflow(a, b, &result))
		return PG_INT64_MAX;
	return result;
}

/*
 * Add amount to the sum of key in htab, an entry being created if need be
 * (its bytes after the SharedSum zeroed); the sum saturates at
 * PG_INT64_MAX.  sum_offset is where the SharedSum of an entry lies.
 * Returns the entry, or NULL when the hash is full; with the LWLock still
 * held (shared or exclusive) when not NULL.  Never raises: callers run in
 * commit and abort callbacks.
 */
static void *
shared_sum_add(HTAB *htab, const void *key, Size sum_offset, Size entrysize,
			   int64 amount)
{
	char	   *entry;
	SharedSum  *sum;

	LWLockAcquire(&usage_shared->lock, LW_SHARED);
	entry = hash_search(htab, key, HASH_FIND, NULL);
	if (entry == NULL)
	{
		bool		found;

		LWLockRelease(&usage_shared->lock);
		LWLockAcquire(&usage_shared->lock, LW_EXCLUSIVE);
		entry = hash_search(htab, key, HASH_ENTER_NULL, &found);
		if (entry == NULL)
		{
			LWLockRelease(&usage_shared->lock);
			return NULL;
		}
		if (!found)
		{
			sum = (SharedSum *) (entry + sum_offset);
			memset(sum, 0, entrysize - sum_offset);
			SpinLockInit(&sum->mutex);
		}
	}
	sum = (SharedSum *) (entry + sum_offset);
	SpinLockAcquire(&sum->mutex);
	sum->amount = add_saturating(sum->amount, amount);
	SpinLockRelease(&sum->mutex);
	return entry;
}

/*
 * Add amount to the shared counter of (this database, resource).  Never
 * raises.
 */
static void
counter_add(const char *resource, int64 amount)
{
	UsageCounterKey key;

	if (usage_shared == NULL || usage_counters == NULL)
		return;
	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	strlcpy(key.resource, resource, sizeof(key.resource));
	if (shared_sum_add(usage_counters, &key, offsetof(UsageCounter, sum),
					   sizeof(UsageCounter), amount) == NULL)
		pg_atomic_fetch_add_u64(&usage_shared->dropped, 1);
	else
		LWLockRelease(&usage_shared->lock);
}

/*
 * Add amount to the waiting sum of (this database, tenant, resource, the
 * hour of at).  False when the table is full (the amount is then lost:
 * commits avoid it, see waiting_has_room()).  Never raises.
 */
static bool
waiting_add(const pg_uuid_t *tenant, const char *resource, TimestampTz at, int64 amount)
{
	WaitingKey	key;
	WaitingSum *entry;

	if (usage_shared == NULL || usage_waiting == NULL)
		return false;
	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	memcpy(&key.tenant, tenant, sizeof(pg_uuid_t));
	strlcpy(key.resource, resource, sizeof(key.resource));
	key.hour = at / USECS_PER_HOUR;
	entry = shared_sum_add(usage_waiting, &key, offsetof(WaitingSum, sum),
						   sizeof(WaitingSum), amount);
	if (entry == NULL)
		return false;
	SpinLockAcquire(&entry->sum.mutex);
	if (entry->first_at == 0 || at < entry->first_at)
		entry->first_at = at;
	SpinLockRelease(&entry->sum.mutex);
	LWLockRelease(&usage_shared->lock);

	if (added_since == 0)
		added_since = GetCurrentTimestamp();
	return true;
}

/* Log, once per session, that usage was lost for want of room. */
static void
report_lost(const char *resource)
{
	if (lost_logged)
		return;
	lost_logged = true;
	ereport(LOG,
			(errmsg("tenancy: no room in shared memory for waiting usage; some usage was not recorded"),
			 errdetail("Usage of resource \"%s\" was dropped; tenancy.stats still counts denials.",
					   resource),
			 errhint("Run tenancy.rollup_usage() more often, or set tenancy.usage_flush_delay lower.")));
}

/*
 * Is there room for n more waiting sums?  Approximate (no lock): a commit
 * that finds too little writes its own sums instead.
 */
static bool
waiting_has_room(long n)
{
	if (usage_waiting == NULL)
		return false;
	return hash_get_num_entries(usage_waiting) + n + USAGE_WAITING_MARGIN <= USAGE_MAX_WAITING;
}

/*
 * Take every waiting sum of this database out of shared memory, into
 * `taken` (put back by waiting_put_back() if the transaction aborts).
 */
static void
waiting_take_all(void)
{
	HASH_SEQ_STATUS status;
	WaitingSum *entry;
	long		room;

	if (usage_waiting == NULL)
		return;
	/* Allocate first: nothing may fail once sums leave shared memory. */
	ensure_exit_callback();
	room = ntaken + hash_get_num_entries(usage_waiting) + 64;
	if (room > taken_alloc)
	{
		ensure_context();
		if (taken == NULL)
			taken = MemoryContextAlloc(usage_context, sizeof(WaitingSum) * room);
		else
			taken = repalloc(taken, sizeof(WaitingSum) * room);
		taken_alloc = room;
	}

	LWLockAcquire(&usage_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&status, usage_waiting);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (entry->key.dbid != MyDatabaseId)
			continue;
		if (ntaken >= room)
		{
			hash_seq_term(&status);
			break;
		}
		taken[ntaken++] = *entry;
		hash_search(usage_waiting, &entry->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(&usage_shared->lock);
	added_since = 0;
}

/* The transaction that took them aborted: they wait again. */
static void
waiting_put_back(void)
{
	for (int i = 0; i < ntaken; i++)
	{
		if (taken[i].sum.amount <= 0)
			continue;
		if (!waiting_add(&taken[i].key.tenant, taken[i].key.resource,
						 taken[i].first_at, taken[i].sum.amount))
			report_lost(taken[i].key.resource);
	}
	ntaken = nwritten = 0;
}

/* ------------------------------------------------------------------------
 * The current transaction's records
 * ------------------------------------------------------------------------
 */

static void
ensure_context(void)
{
	if (usage_context == NULL)
		usage_context = AllocSetContextCreate(TopMemoryContext,
											  "tenancy usage",
											  ALLOCSET_SMALL_SIZES);
}

static void
pending_reset(void)
{
	if (pending != NULL)
	{
		hash_destroy(pending);
		pending = NULL;
	}
	pending_max_level = 0;
}

/* Add amount to the pending entry of (tenant, resource, level). */
static void
pending_add(const pg_uuid_t *tenant, const char *resource, int level, int64 amount,
			bool raise_on_overflow)
{
	PendingKey	key;
	PendingEntry *entry;
	bool		found;

	if (pending == NULL)
	{
		HASHCTL		info;

		ensure_exit_callback();
		ensure_context();
		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(PendingKey);
		info.entrysize = sizeof(PendingEntry);
		info.hcxt = usage_context;
		pending = hash_create("tenancy pending usage", 64, &info,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&key, 0, sizeof(key));
	memcpy(&key.tenant, tenant, sizeof(pg_uuid_t));
	key.level = level;
	strlcpy(key.resource, resource, sizeof(key.resource));

	entry = hash_search(pending, &key, HASH_ENTER, &found);
	if (!found)
		entry->amount = 0;
	if (pg_add_s64_overflow(entry->amount, amount, &entry->amount))
	{
		/* Never fail inside a subtransaction-end callback: saturate. */
		entry->amount = PG_INT64_MAX;
		if (!raise_on_overflow)
			return;
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("tenancy: usage of resource \"%s\" is out of range", resource),
				 errdetail("The amounts recorded in this transaction overflow a bigint.")));
	}
	if (level > pending_max_level)
		pending_max_level = level;
}

/*
 * At the end of a subtransaction of nesting level `level`: drop its entries
 * (abort) or merge them into its parent's level (commit).
 */
static void
pending_subxact_end(int level, bool commit)
{
	HASH_SEQ_STATUS status;
	PendingEntry *entry;
	PendingEntry *moved = NULL;
	int			nmoved = 0;
	int			i;

	if (pending == NULL || pending_max_level < level)
		return;

	if (commit)
		moved = MemoryContextAlloc(usage_context,
								   sizeof(PendingEntry) * hash_get_num_entries(pending));
	hash_seq_init(&status, pending);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (entry->key.level < level)
			continue;
		if (commit)
			moved[nmoved++] = *entry;
		hash_search(pending, &entry->key, HASH_REMOVE, NULL);
	}
	pending_max_level = level - 1;
	for (i = 0; i < nmoved; i++)
		pending_add(&moved[i].key.tenant, moved[i].key.resource, level - 1,
					moved[i].amount, false);
	if (moved)
		pfree(moved);
}

/* Rows of usage (tenant, resource, time, amount), gathered as arrays. */
typedef struct UsageRows
{
	int			n;
	int			alloc;
	Datum	   *tenants;
	Datum	   *resources;
	Datum	   *ats;
	Datum	   *amounts;
} UsageRows;

static void
usage_rows_init(UsageRows *rows, int alloc)
{
	rows->n = 0;
	rows->alloc = Max(alloc, 1);
	rows->tenants = palloc(sizeof(Datum) * rows->alloc);
	rows->resources = palloc(sizeof(Datum) * rows->alloc);
	rows->ats = palloc(sizeof(Datum) * rows->alloc);
	rows->amounts = palloc(sizeof(Datum) * rows->alloc);
}

/* Add a row; tenant must stay valid until usage_rows_arrays(). */
static void
usage_rows_add(UsageRows *rows, const pg_uuid_t *tenant, const char *resource,
			   TimestampTz at, int64 amount)
{
	if (rows->n == rows->alloc)
	{
		rows->alloc *= 2;
		rows->tenants = repalloc(rows->tenants, sizeof(Datum) * rows->alloc);
		rows->resources = repalloc(rows->resources, sizeof(Datum) * rows->alloc);
		rows->ats = repalloc(rows->ats, sizeof(Datum) * rows->alloc);
		rows->amounts = repalloc(rows->amounts, sizeof(Datum) * rows->alloc);
	}
	rows->tenants[rows->n] = UUIDPGetDatum(tenant);
	rows->resources[rows->n] = CStringGetTextDatum(resource);
	rows->ats[rows->n] = TimestampTzGetDatum(at);
	rows->amounts[rows->n] = Int64GetDatum(amount);
	rows->n++;
}

/* The rows as four arrays: uuid[], text[], timestamptz[], bigint[]. */
static void
usage_rows_arrays(const UsageRows *rows, Datum *out)
{
	out[0] = PointerGetDatum(construct_array(rows->tenants, rows->n, UUIDOID, UUID_LEN,
											 false, TYPALIGN_CHAR));
	out[1] = PointerGetDatum(construct_array(rows->resources, rows->n, TEXTOID, -1,
											 false, TYPALIGN_INT));
	out[2] = PointerGetDatum(construct_array(rows->ats, rows->n, TIMESTAMPTZOID,
											 sizeof(TimestampTz), FLOAT8PASSBYVAL,
											 TYPALIGN_DOUBLE));
	out[3] = PointerGetDatum(construct_array(rows->amounts, rows->n, INT8OID, sizeof(int64),
											 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* Carry this transaction's sums into shared memory (at its commit). */
static void
pending_publish(void)
{
	HASH_SEQ_STATUS status;
	PendingEntry *entry;
	TimestampTz xact_start = GetCurrentTransactionStartTimestamp();

	if (pending == NULL)
		return;
	hash_seq_init(&status, pending);
	while ((entry = hash_seq_search(&status)) != NULL)
		if (entry->amount > 0 &&
			!waiting_add(&entry->key.tenant, entry->key.resource, xact_start, entry->amount))
			report_lost(entry->key.resource);
	pending_reset();
}

/*
 * Should this commit write usage?  With tenancy.usage_flush_delay = 0, or
 * when shared memory is short of room, it writes its own sums; when this
 * backend added sums tenancy.usage_flush_delay ago, it writes every
 * waiting sum of the database.
 */
static bool
usage_flush_due(bool *take_waiting)
{
	long		npending = pending ? hash_get_num_entries(pending) : 0;

	*take_waiting = added_since != 0 &&
		TimestampDifferenceExceeds(added_since, GetCurrentTransactionStartTimestamp(),
								   tenancy_guc_usage_flush_delay);
	if (*take_waiting)
		return true;
	return npending > 0 &&
		(tenancy_guc_usage_flush_delay == 0 || !waiting_has_room(npending));
}

/*
 * Write this transaction's sums and, if take_waiting, every waiting sum of
 * this database, in one INSERT, as the owner of tenancy.usage_events.  Only
 * at the top level of a read-write transaction (so that no subtransaction
 * can take the rows with it); false if it cannot write here.
 */
static bool
usage_flush(bool take_waiting)
{
	int			npending = pending ? hash_get_num_entries(pending) : 0;
	int			i;
	UsageRows	rows;
	Datum		args[4];
	Oid			relid;
	Oid			save_userid;
	int			save_sec;
	int			ret;
	HASH_SEQ_STATUS status;
	PendingEntry *entry;
	TimestampTz xact_start = GetCurrentTransactionStartTimestamp();
	TenancySeenTenant seen = {0};

	if (GetCurrentTransactionNestLevel() != 1 || IsParallelWorker() ||
		XactReadOnly || RecoveryInProgress())
		return false;
	relid = tenancy_relation_oid("usage_events", true);
	if (!OidIsValid(relid))
	{
		/* The extension is not (or no longer) installed here: drop it all. */
		pending_reset();
		if (take_waiting)
		{
			waiting_take_all();
			ntaken = nwritten = 0;
		}
		return true;
	}
	if (take_waiting)
		waiting_take_all();
	if (npending == 0 && ntaken == nwritten)
		return true;

	/*
	 * The tenant test below sees what the INSERT will see: SPI advances
	 * the command counter and takes a new snapshot for it, so do the same
	 * (a tenant deleted by the last statement of a purge is gone).
	 */
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());

	usage_rows_init(&rows, npending + ntaken - nwritten);
	if (npending > 0)
	{
		hash_seq_init(&status, pending);
		while ((entry = hash_seq_search(&status)) != NULL)
			if (entry->amount != 0 && tenancy_tenant_exists_seen(&entry->key.tenant, &seen))
				usage_rows_add(&rows, &entry->key.tenant, entry->key.resource, xact_start,
							   entry->amount);
	}
	for (i = nwritten; i < ntaken; i++)
		if (taken[i].sum.amount > 0 && tenancy_tenant_exists_seen(&taken[i].key.tenant, &seen))
			usage_rows_add(&rows, &taken[i].key.tenant, taken[i].key.resource,
						   taken[i].first_at, taken[i].sum.amount);

	if (rows.n > 0)
	{
		usage_rows_arrays(&rows, args);

		GetUserIdAndSecContext(&save_userid, &save_sec);
		SetUserIdAndSecContext(tenancy_relation_owner(relid, false), save_sec | SECURITY_LOCAL_USERID_CHANGE);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (insert_plan == NULL)
		{
			Oid			argtypes[4] = {UUIDARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID};
			SPIPlanPtr	plan;

			/*
			 * No EXISTS test on tenancy.tenants here: its generic plan
			 * hashes a sequential scan of every tenant at each commit
			 * (tenancy_tenant_exists_seen() does the test above).
			 */
			plan = SPI_prepare("INSERT INTO tenancy.usage_events (tenant_id, resource, at, amount) "
							   "SELECT e.t, e.r, e.a, e.m "
							   "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
							   "pg_catalog.unnest($3), pg_catalog.unnest($4)) AS e(t, r, a, m)",
							   4, argtypes);
			if (plan == NULL)
				elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
			if (SPI_keepplan(plan) != 0)
				elog(ERROR, "SPI_keepplan failed");
			insert_plan = plan;
		}
		ret = SPI_execute_plan(insert_plan, args, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "tenancy: writing usage failed: %s", SPI_result_code_string(ret));
		SPI_finish();
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PopActiveSnapshot();
	pending_reset();
	nwritten = ntaken;
	return true;
}

/*
 * At backend exit, write the waiting sums of this database if this backend
 * added some, in a transaction of its own (as temporary relations are
 * removed at exit).
 */
static bool
usage_exit_needed(void)
{
	return added_since != 0 || ntaken > 0;
}

static void
usage_exit_flush(void)
{
	(void) usage_flush(true);
}

/*
 * This backend is about to leave sums waiting: make sure it writes them
 * when it exits.  Called before the commit or abort that adds them.
 */
static void
ensure_exit_callback(void)
{
	tenancy_at_exit(usage_exit_needed, usage_exit_flush);
}

static void
usage_xact_callback(XactEvent event, void *arg)
{
	bool		take_waiting;

	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (usage_flush_due(&take_waiting))
			{
				/* Waiting usage may be lost in a crash anyway: see commit.c. */
				tenancy_commit_write_begin();
				(void) usage_flush(take_waiting);
				tenancy_commit_write_end(tenancy_guc_usage_flush_delay > 0);
			}
			break;
		case XACT_EVENT_PRE_PREPARE:

			/*
			 * Waiting sums taken out of shared memory (by rollup_usage())
			 * are written in this transaction; prepared, it could be
			 * rolled back in another session, or after a restart, where
			 * nothing can put them back: refuse.
			 */
			if (ntaken > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("tenancy: cannot prepare a transaction that wrote waiting usage"),
						 errdetail("This transaction wrote usage that committed transactions recorded; a ROLLBACK PREPARED could not give it back."),
						 errhint("Run tenancy.rollup_usage() or tenancy.run_maintenance() outside a prepared transaction.")));
			/* A prepared transaction's records go with it. */
			if (pending != NULL && !usage_flush(false))
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("tenancy: cannot PREPARE a transaction that recorded usage here"),
						 errhint("Record usage at the top level of a read-write transaction.")));
			break;
		case XACT_EVENT_COMMIT:
			ntaken = nwritten = 0;
			pending_publish();
			audit_purge_allowed = false;
			break;
		case XACT_EVENT_PREPARE:
			ntaken = nwritten = 0;
			pending_reset();
			audit_purge_allowed = false;
			break;
		case XACT_EVENT_ABORT:
			waiting_put_back();
			pending_reset();
			audit_purge_allowed = false;
			break;
		default:
			/* parallel workers record nothing */
			pending_reset();
			audit_purge_allowed = false;
			break;
	}
}

static void
usage_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		pending_subxact_end(GetCurrentTransactionNestLevel(), false);
		audit_purge_allowed = false;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		pending_subxact_end(GetCurrentTransactionNestLevel(), true);
}

/* Called from _PG_init. */
void
tenancy_usage_init(void)
{
	RegisterXactCallback(usage_xact_callback, NULL);
	RegisterSubXactCallback(usage_subxact_callback, NULL);
}

/*
 * Is resource a valid resource name?  1 to TENANCY_RESOURCE_MAXLEN bytes.
 */
bool
tenancy_usage_resource_ok(const char *resource)
{
	size_t		len = resource ? strlen(resource) : 0;

	return len >= 1 && len <= TENANCY_RESOURCE_MAXLEN;
}

/*
 * Record usage of a resource by a tenant; the hook of the other areas.
 * Transactional unless survive_abort, in which case the record outlives the
 * rollback of the current transaction (it waits in shared memory at once)
 * and is counted in the denial counters.  Amounts <= 0 and invalid
 * resource names are ignored, and sums saturate: a meter never makes its
 * caller fail.
 */
void
tenancy_usage_record(const pg_uuid_t *tenant, const char *resource,
					 int64 amount, bool survive_abort)
{
	if (tenant == NULL || amount <= 0 || !tenancy_usage_resource_ok(resource) ||
		IsParallelWorker())
		return;
	if (survive_abort)
	{
		ensure_exit_callback();
		counter_add(resource, amount);
		if (!waiting_add(tenant, resource, GetCurrentTimestamp(), amount))
			report_lost(resource);
	}
	else
		pending_add(tenant, resource, GetCurrentTransactionNestLevel(), amount, false);
}

/*
 * Add amount to the shared counter `name` of this database (a counter of
 * tenancy.stats that no rollback undoes: authentication failures).  Never
 * raises; a full counter table counts into "dropped".
 */
void
tenancy_usage_count(const char *name, int64 amount)
{
	if (amount > 0 && OidIsValid(MyDatabaseId))
		counter_add(name, amount);
}

/* The shared counter `name` of this database; 0 if it has none. */
int64
tenancy_usage_counter(const char *name)
{
	UsageCounterKey key;
	UsageCounter *entry;
	int64		amount = 0;

	if (usage_shared == NULL || usage_counters == NULL)
		return 0;
	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	strlcpy(key.resource, name, sizeof(key.resource));
	LWLockAcquire(&usage_shared->lock, LW_SHARED);
	entry = hash_search(usage_counters, &key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		SpinLockAcquire(&entry->sum.mutex);
		amount = entry->sum.amount;
		SpinLockRelease(&entry->sum.mutex);
	}
	LWLockRelease(&usage_shared->lock);
	return amount;
}

/*
 * Record rows inserted into and deleted from a protected table by a tenant
 * (resources rows_inserted:<table> and rows_deleted:<table>, the table as
 * regclass::text prints it).  Transactional.  For the row counting of
 * protected tables.
 */
void
tenancy_usage_record_rows(Oid relid, const pg_uuid_t *tenant, int64 inserted,
						  int64 deleted)
{
	char	   *table;
	char		resource[TENANCY_RESOURCE_MAXLEN + 1];

	if (inserted <= 0 && deleted <= 0)
		return;
	table = DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(relid)));
	if (inserted > 0)
	{
		snprintf(resource, sizeof(resource), "rows_inserted:%s", table);
		tenancy_usage_record(tenant, resource, inserted, false);
	}
	if (deleted > 0)
	{
		snprintf(resource, sizeof(resource), "rows_deleted:%s", table);
		tenancy_usage_record(tenant, resource, deleted, false);
	}
	pfree(table);
}

/* ------------------------------------------------------------------------
 * SQL functions
 * ------------------------------------------------------------------------
 */

static void
raise_other_tenant(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("tenancy: permission denied for another tenant"),
			 errdetail("This session acts for its own tenant only."),
			 errhint("Omit the tenant argument, or call as a member of tenancy_admin.")));
}

/*
 * The tenant of a "tenant text DEFAULT NULL" argument: NULL is the context
 * tenant; administrators may name any tenant; anyone else only their own,
 * with the same 42501 whether another tenant exists or not.
 */
static void
tenant_arg_or_context(FunctionCallInfo fcinfo, int argno, pg_uuid_t *out)
{
	char	   *arg;
	TenancyTenant tenant;

	if (PG_ARGISNULL(argno))
	{
		memcpy(out, tenancy_context_current(), sizeof(pg_uuid_t));
		return;
	}
	arg = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (tenancy_context_is_admin())
	{
		tenancy_tenant_resolve(arg, &tenant);
		memcpy(out, &tenant.id, sizeof(pg_uuid_t));
		return;
	}
	memcpy(out, tenancy_context_current(), sizeof(pg_uuid_t));
	if (!tenancy_tenant_try_resolve(arg, &tenant) ||
		memcmp(tenant.id.data, out->data, UUID_LEN) != 0)
		raise_other_tenant();
}

/* A validated resource argument; 22023 otherwise. */
static char *
resource_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *resource;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: resource must not be null"),
				 errhint("Pass a resource name such as 'api_calls'.")));
	resource = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (!tenancy_usage_resource_ok(resource))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: resource name must be 1 to %d bytes long", TENANCY_RESOURCE_MAXLEN),
				 errdetail("The name has %zu bytes.", strlen(resource)),
				 errhint("Pass a resource name such as 'api_calls'.")));
	return resource;
}

/*
 * SQL: tenancy.record_usage(resource text, amount bigint DEFAULT 1,
 * tenant text DEFAULT NULL).  Transactional; cheap: it only adds to a
 * backend-local sum, written once at commit.
 */
Datum
tenancy_record_usage(PG_FUNCTION_ARGS)
{
	char	   *resource = resource_arg(fcinfo, 0);
	int64		amount;
	pg_uuid_t	tenant;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: amount must not be null"),
				 errhint("Omit it to record 1.")));
	amount = PG_GETARG_INT64(1);
	if (amount < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: amount must not be negative"),
				 errdetail("The amount is " INT64_FORMAT ".", amount),
				 errhint("Usage only grows; record 0 or more.")));
	tenant_arg_or_context(fcinfo, 2, &tenant);
	if (amount > 0)
		pending_add(&tenant, resource, GetCurrentTransactionNestLevel(), amount, true);
	PG_RETURN_VOID();
}

/*
 * SQL: tenancy._usage_record_carried(tenant uuid, resource text, amount
 * bigint): record as the denial meters do (surviving a rollback).
 * Internal, for tests; not granted to anyone.
 */
Datum
tenancy_usage_record_carried(PG_FUNCTION_ARGS)
{
	char	   *resource = resource_arg(fcinfo, 1);

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2))
		PG_RETURN_VOID();
	require_shmem();
	tenancy_usage_record(PG_GETARG_UUID_P(0), resource, PG_GETARG_INT64(2), true);
	PG_RETURN_VOID();
}

/*
 * SQL: tenancy._usage_rollup_lock(): the lock on which rollup_usage() runs
 * take turns, until the end of the transaction.  It lives in tenancy's own
 * advisory lock space (tenancy.h), so no session can hold it, and so stall
 * every rollup, with pg_advisory_lock().  Internal: EXECUTE is not granted;
 * rollup_usage() (SECURITY DEFINER) calls it.
 */
Datum
tenancy_usage_rollup_lock(PG_FUNCTION_ARGS)
{
	LOCKTAG		tag;

	TENANCY_SET_LOCKTAG(tag, TENANCY_LOCK_ROLLUP, 0);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	PG_RETURN_VOID();
}

/*
 * SQL: tenancy._usage_flush(): write every waiting sum of this database and
 * this transaction's records now, in the current transaction (top level of
 * a read-write transaction; elsewhere it does nothing).  Internal:
 * rollup_usage() calls it.
 */
Datum
tenancy_usage_flush(PG_FUNCTION_ARGS)
{
	require_shmem();
	(void) usage_flush(true);
	tenancy_quota_request_flush();
	PG_RETURN_VOID();
}

/* Set up a materialized SRF result; returns the tuplestore. */
static Tuplestorestate *
materialize_srf(FunctionCallInfo fcinfo, TupleDesc *tupdesc)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext oldcontext;
	Tuplestorestate *tupstore;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("tenancy: set-valued function called in context that cannot accept a set")));
	oldcontext = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	if (get_call_result_type(fcinfo, NULL, tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	*tupdesc = CreateTupleDescCopy(*tupdesc);
	tupstore = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tupstore;
	rsinfo->setDesc = *tupdesc;
	MemoryContextSwitchTo(oldcontext);
	return tupstore;
}

/*
 * A session bound by an API key reads its usage only with the key's
 * `admin` permission (SPEC section 5).  Read as the owner of api_keys.
 */
static void
require_key_admin_for_usage(void)
{
	pg_uuid_t	bound_tenant;
	pg_uuid_t	key;
	Oid			relid;
	Oid			save_userid;
	int			save_sec;
	Oid			argtypes[1] = {UUIDOID};
	Datum		args[1];
	bool		allowed = false;

	if (tenancy_context_is_admin() || !tenancy_context_binding(&bound_tenant, &key))
		return;
	relid = tenancy_relation_oid("api_keys", true);
	if (OidIsValid(relid))
	{
		GetUserIdAndSecContext(&save_userid, &save_sec);
		SetUserIdAndSecContext(tenancy_relation_owner(relid, false), save_sec | SECURITY_LOCAL_USERID_CHANGE);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		args[0] = UUIDPGetDatum(&key);
		if (SPI_execute_with_args("SELECT 1 FROM tenancy.api_keys "
								  "WHERE id OPERATOR(pg_catalog.=) $1 "
								  "AND 'admin' OPERATOR(pg_catalog.=) ANY (permissions)",
								  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "tenancy: reading the key's permissions failed");
		allowed = SPI_processed > 0;
		SPI_finish();
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	if (!allowed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenancy: permission denied to read usage"),
				 errdetail("The API key this session is bound to does not have the admin permission."),
				 errhint("Authenticate with a key that has the admin permission.")));
}

/*
 * What is recorded for a tenant in this database but not written: the
 * waiting sums of every session (stamped with their first record) and
 * this transaction's own records of every live subtransaction level
 * (stamped with its start), as three arrays: resource, time, amount.
 */
static void
unwritten_arrays(const pg_uuid_t *tenant, Datum *resources, Datum *ats, Datum *amounts)
{
	HASH_SEQ_STATUS status;
	WaitingSum *entry;
	PendingEntry *p;
	UsageRows	rows;
	Datum		arrays[4];

	require_shmem();
	usage_rows_init(&rows, 16);
	LWLockAcquire(&usage_shared->lock, LW_SHARED);
	hash_seq_init(&status, usage_waiting);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		int64		amount;
		TimestampTz at;

		if (entry->key.dbid != MyDatabaseId ||
			memcmp(&entry->key.tenant, tenant, sizeof(pg_uuid_t)) != 0)
			continue;
		SpinLockAcquire(&entry->sum.mutex);
		amount = entry->sum.amount;
		at = entry->first_at;
		SpinLockRelease(&entry->sum.mutex);
		if (amount > 0)
			usage_rows_add(&rows, tenant, entry->key.resource, at, amount);
	}
	LWLockRelease(&usage_shared->lock);
	/*
	 * Every live subtransaction level counts: what the transaction would
	 * commit now (a rolled-back level's entries are already gone).
	 */
	if (pending != NULL)
	{
		hash_seq_init(&status, pending);
		while ((p = hash_seq_search(&status)) != NULL)
			if (p->amount > 0 && memcmp(&p->key.tenant, tenant, sizeof(pg_uuid_t)) == 0)
				usage_rows_add(&rows, tenant, p->key.resource,
							   GetCurrentTransactionStartTimestamp(), p->amount);
	}
	usage_rows_arrays(&rows, arrays);
	*resources = arrays[1];
	*ats = arrays[2];
	*amounts = arrays[3];
}

/*
 * SQL: tenancy.usage(tenant text, since timestamptz, until timestamptz,
 * granularity text DEFAULT 'day') RETURNS TABLE(period_start timestamptz,
 * resource text, amount bigint).
 *
 * The periods (UTC) whose start lies in [date_trunc(granularity, since),
 * until), i.e. that overlap [since, until), from the rollups plus the
 * events not yet folded, so the answer does not depend on when
 * rollup_usage() last ran.  NULL since or until: unbounded.  An empty or
 * reversed window (since >= until) overlaps no period: no rows.  The
 * waiting sums of every session and this transaction's own records (what
 * it would commit now, subtransactions included) are added.
 */
typedef struct UsageRow
{
	TimestampTz period_start;
	char	   *resource;
	int64		amount;
} UsageRow;

static int
usage_row_cmp(const void *a, const void *b)
{
	const UsageRow *x = a;
	const UsageRow *y = b;

	if (x->period_start != y->period_start)
		return x->period_start < y->period_start ? -1 : 1;
	return strcmp(x->resource, y->resource);
}

Datum
tenancy_usage(PG_FUNCTION_ARGS)
{
	MemoryContext outer = CurrentMemoryContext;
	UsageRow   *rows;
	uint64		nrows;
	char	   *granularity;
	pg_uuid_t	tenant;
	TupleDesc	tupdesc;
	Tuplestorestate *tupstore;
	Oid			relid;
	Oid			save_userid;
	int			save_sec;
	int			save_nestlevel;
	Oid			argtypes[7] = {UUIDOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	TEXTARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID};
	Datum		args[7];
	uint64		i;
	Snapshot	snapshot;
	SPIPlanPtr	plan;

	if (PG_ARGISNULL(3))
		granularity = "day";
	else
		granularity = text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (strcmp(granularity, "hour") != 0 && strcmp(granularity, "day") != 0 &&
		strcmp(granularity, "month") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: invalid granularity \"%s\"", granularity),
				 errhint("Use hour, day or month.")));

	tenant_arg_or_context(fcinfo, 0, &tenant);
	require_key_admin_for_usage();

	tupstore = materialize_srf(fcinfo, &tupdesc);

	/* [since, until) is empty: no period overlaps it. */
	if (!PG_ARGISNULL(1) && !PG_ARGISNULL(2) &&
		PG_GETARG_TIMESTAMPTZ(1) >= PG_GETARG_TIMESTAMPTZ(2))
		return (Datum) 0;

	relid = tenancy_relation_oid("usage_events", true);
	if (!OidIsValid(relid))
		elog(ERROR, "tenancy: relation tenancy.usage_events is missing");

	/*
	 * The snapshot comes first: sums a session writes to usage_events leave
	 * shared memory before that session commits, so whatever this snapshot
	 * sees written is no longer waiting when the waiting sums are read
	 * after it.  (The other order could count a sum twice: read waiting,
	 * then written and committed, then seen by a later snapshot.)
	 */
	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	unwritten_arrays(&tenant, &args[4], &args[5], &args[6]);
	args[0] = UUIDPGetDatum(&tenant);
	args[1] = CStringGetTextDatum(granularity);
	args[2] = PG_ARGISNULL(1) ? DirectFunctionCall1(timestamptz_in, CStringGetDatum("-infinity"))
		: PG_GETARG_DATUM(1);
	args[3] = PG_ARGISNULL(2) ? DirectFunctionCall1(timestamptz_in, CStringGetDatum("infinity"))
		: PG_GETARG_DATUM(2);

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(tenancy_relation_owner(relid, false), save_sec | SECURITY_LOCAL_USERID_CHANGE);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = SPI_prepare("WITH b AS (SELECT date_trunc($2, $3, 'UTC') AS lo, $4 AS hi) "
					   "SELECT s.period_start, s.resource, "
					   "       LEAST(sum(s.amount), 9223372036854775807::numeric)::bigint "
					   "  FROM (SELECT r.period_start, r.resource, r.amount "
					   "          FROM tenancy.usage_rollups r, b "
					   "         WHERE r.tenant_id = $1 AND r.granularity = $2 "
					   "           AND r.period_start >= b.lo AND r.period_start < b.hi "
					   "        UNION ALL "
					   "        SELECT date_trunc($2, e.at, 'UTC'), e.resource, e.amount "
					   "          FROM tenancy.usage_events e, b "
					   "         WHERE e.tenant_id = $1 AND e.at >= b.lo "
					   "           AND date_trunc($2, e.at, 'UTC') < b.hi "
					   "        UNION ALL "
					   "        SELECT date_trunc($2, u.a, 'UTC'), u.r, u.m "
					   "          FROM ROWS FROM (unnest($5), unnest($6), unnest($7)) AS u(r, a, m), b "
					   "         WHERE u.a >= b.lo AND date_trunc($2, u.a, 'UTC') < b.hi) s "
					   " GROUP BY 1, 2 ORDER BY 1, 2",
					   7, argtypes);
	if (plan == NULL)
		elog(ERROR, "tenancy: preparing the usage query failed: %s",
			 SPI_result_code_string(SPI_result));
	if (SPI_execute_snapshot(plan, args, NULL, snapshot, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "tenancy: reading usage failed");

	nrows = SPI_processed;
	rows = MemoryContextAlloc(outer, sizeof(UsageRow) * Max(nrows, 1));
	for (i = 0; i < nrows; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		rows[i].period_start = DatumGetTimestampTz(SPI_getbinval(tup, desc, 1, &isnull));
		rows[i].resource = MemoryContextStrdup(outer, TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull)));
		rows[i].amount = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	}
	SPI_finish();
	UnregisterSnapshot(snapshot);
	AtEOXact_GUC(true, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec);

	/* Tables print as the caller's search_path shows them, as in quotas. */
	for (i = 0; i < nrows; i++)
		rows[i].resource = tenancy_display_resource(rows[i].resource);
	qsort(rows, nrows, sizeof(UsageRow), usage_row_cmp);
	for (i = 0; i < nrows; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		/*
		 * Names that print alike are one resource (rows_inserted:t recorded
		 * by hand and the meter of public.t, when public is on the path).
		 */
		if (i + 1 < nrows && usage_row_cmp(&rows[i], &rows[i + 1]) == 0)
		{
			rows[i + 1].amount = add_saturating(rows[i + 1].amount, rows[i].amount);
			continue;
		}
		values[0] = TimestampTzGetDatum(rows[i].period_start);
		values[1] = CStringGetTextDatum(rows[i].resource);
		values[2] = Int64GetDatum(rows[i].amount);
		tuplestore_putvalues(tupstore, tupdesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * SQL: tenancy._usage_counters() RETURNS TABLE(resource text, amount
 * bigint): the shared counters of this database since the server started
 * (rollback-surviving records, authentication failures), for
 * tenancy.stats.  Other databases' counters are not shown.
 */
Datum
tenancy_usage_counters(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Tuplestorestate *tupstore;
	HASH_SEQ_STATUS status;
	UsageCounter *entry;

	require_shmem();
	tupstore = materialize_srf(fcinfo, &tupdesc);
	LWLockAcquire(&usage_shared->lock, LW_SHARED);
	hash_seq_init(&status, usage_counters);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};
		int64		amount;

		if (entry->key.dbid != MyDatabaseId)
			continue;
		SpinLockAcquire(&entry->sum.mutex);
		amount = entry->sum.amount;
		SpinLockRelease(&entry->sum.mutex);
		values[0] = CStringGetTextDatum(entry->key.resource);
		values[1] = Int64GetDatum(amount);
		tuplestore_putvalues(tupstore, tupdesc, values, nulls);
	}
	LWLockRelease(&usage_shared->lock);
	return (Datum) 0;
}

/*
 * Trigger function of tenancy.audit_log: BEFORE UPDATE OR DELETE FOR EACH
 * ROW and BEFORE TRUNCATE.  Refuses everything but the DELETE of the
 * retention purge.
 */
Datum
tenancy_audit_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: audit guard not called by trigger manager")));
	if (!TRIGGER_FIRED_BEFORE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: audit guard must be fired before the event")));

	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) &&
		TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) && audit_purge_allowed)
		return PointerGetDatum(trigdata->tg_trigtuple);

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("tenancy: the audit log is append-only"),
			 errdetail("UPDATE, DELETE and TRUNCATE of tenancy.audit_log are refused; only the retention purge of tenancy.run_maintenance() removes rows."),
			 errhint("Set tenancy.audit_retention to choose how long rows are kept.")));
	PG_RETURN_NULL();			/* keep compiler quiet */
}

/*
 * SQL: tenancy._audit_purge(before timestamptz) RETURNS bigint: delete the
 * audit rows older than `before`, the only DELETE the guard lets through,
 * and, when it deleted some, append an audit.purge row saying what it
 * removed (how many rows, the cutoff, the times of the oldest and newest),
 * whoever called it.  Internal: run_maintenance() calls it; not granted to
 * anyone.
 */
Datum
tenancy_audit_purge(PG_FUNCTION_ARGS)
{
	Oid			argtypes[4] = {TIMESTAMPTZOID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		args[4];
	bool		isnull;
	int64		deleted;

	if (PG_ARGISNULL(0))
		PG_RETURN_INT64(0);
	args[0] = PG_GETARG_DATUM(0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	audit_purge_allowed = true;
	PG_TRY();
	{
		if (SPI_execute_with_args("WITH d AS (DELETE FROM tenancy.audit_log "
								  "           WHERE at OPERATOR(pg_catalog.<) $1 RETURNING at) "
								  "SELECT pg_catalog.count(*), pg_catalog.min(d.at), pg_catalog.max(d.at) FROM d",
								  1, argtypes, args, NULL, false, 0) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "tenancy: purging the audit log failed");
	}
	PG_FINALLY();
	{
		audit_purge_allowed = false;
	}
	PG_END_TRY();
	deleted = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (deleted > 0)
	{
		args[1] = Int64GetDatum(deleted);
		args[2] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		args[3] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		if (SPI_execute_with_args("SELECT tenancy._audit('audit.purge', NULL, NULL, "
								  "pg_catalog.jsonb_build_object('rows', $2, 'before', $1, "
								  "'oldest', $3, 'newest', $4))",
								  4, argtypes, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "tenancy: recording the audit log purge failed");
	}
	SPI_finish();
	PG_RETURN_INT64(deleted);
}

/*
 * The relation a DDL statement is about, for the audit log's DDL guard:
 * the table it alters, renames, moves, or puts a trigger, rule or policy
 * on or takes one off (NULL for any other statement).
 */
static RangeVar *
ddl_relation(Node *parsetree)
{
	switch (nodeTag(parsetree))
	{
		case T_AlterTableStmt:
			return ((AlterTableStmt *) parsetree)->relation;
		case T_RenameStmt:
			return ((RenameStmt *) parsetree)->relation;
		case T_AlterObjectSchemaStmt:
			return ((AlterObjectSchemaStmt *) parsetree)->relation;
		case T_AlterObjectDependsStmt:
			return ((AlterObjectDependsStmt *) parsetree)->relation;
		case T_CreateTrigStmt:
			return ((CreateTrigStmt *) parsetree)->relation;
		case T_RuleStmt:
			return ((RuleStmt *) parsetree)->relation;
		case T_CreatePolicyStmt:
			return ((CreatePolicyStmt *) parsetree)->table;
		case T_AlterPolicyStmt:
			return ((AlterPolicyStmt *) parsetree)->table;
		default:
			return NULL;
	}
}

/* Is rv tenancy.audit_log (as the search_path resolves it)? */
static bool
is_audit_log(RangeVar *rv, Oid audit_rel)
{
	return rv != NULL && RangeVarGetRelid(rv, NoLock, true) == audit_rel;
}

/*
 * Event trigger function tenancy._on_audit_ddl(), on ddl_command_start of
 * the commands that can change a table (event trigger
 * tenancy_audit_ddl_guard): refuse (42501) any of them on
 * tenancy.audit_log outside the extension's own scripts (CREATE
 * EXTENSION, ALTER EXTENSION UPDATE), whatever tenancy._ddl_bypass() says.
 * Dropping or renaming a column, renaming the table or moving it to
 * another schema, a trigger or rule that would swallow its INSERTs,
 * disabling its guard: each would let the log be rewritten or bypassed.
 * Before the command runs, so that a table being renamed is still found by
 * its name.  DROP EXTENSION drops it, as the extension's.
 */
Datum
tenancy_audit_ddl(PG_FUNCTION_ARGS)
{
	Node	   *parsetree;
	Oid			audit_rel;
	bool		touches = false;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy: tenancy._on_audit_ddl() must be fired by an event trigger")));
	parsetree = ((EventTriggerData *) fcinfo->context)->parsetree;
	if (parsetree == NULL ||
		(creating_extension && CurrentExtensionObject == get_extension_oid("tenancy", true)))
		PG_RETURN_VOID();
	audit_rel = tenancy_relation_oid("audit_log", true);
	if (!OidIsValid(audit_rel))
		PG_RETURN_VOID();

	touches = is_audit_log(ddl_relation(parsetree), audit_rel);
	if (!touches && IsA(parsetree, AlterTableStmt))
	{
		/* ALTER TABLE p ATTACH PARTITION tenancy.audit_log. */
		ListCell   *lc;

		foreach(lc, ((AlterTableStmt *) parsetree)->cmds)
		{
			AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);

			if (cmd->subtype == AT_AttachPartition && cmd->def != NULL &&
				is_audit_log(((PartitionCmd *) cmd->def)->name, audit_rel))
				touches = true;
		}
	}
	if (!touches && IsA(parsetree, DropStmt))
	{
		/* DROP TRIGGER / RULE / POLICY name ON tenancy.audit_log. */
		DropStmt   *stmt = (DropStmt *) parsetree;
		ListCell   *lc;

		if (stmt->removeType == OBJECT_TRIGGER || stmt->removeType == OBJECT_RULE ||
			stmt->removeType == OBJECT_POLICY)
			foreach(lc, stmt->objects)
			{
				List	   *names = (List *) lfirst(lc);

				if (list_length(names) >= 2 &&
					is_audit_log(makeRangeVarFromNameList(list_truncate(list_copy(names),
																		list_length(names) - 1)),
								 audit_rel))
					touches = true;
			}
	}
	if (touches)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenancy: the audit log is append-only"),
				 errdetail("%s would change tenancy.audit_log; only the extension's own scripts may change it.",
						   CreateCommandName(parsetree)),
				 errhint("Old audit rows are removed by tenancy.run_maintenance() after tenancy.audit_retention; the table changes only with ALTER EXTENSION tenancy UPDATE.")));
	PG_RETURN_VOID();
}
