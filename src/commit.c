/*-------------------------------------------------------------------------
 *
 * commit.c
 *		How a commit that only wrote tenancy's own bookkeeping waits for
 *		its WAL flush, and the transactions that write what waits in
 *		shared memory when a backend exits.
 *
 * At PRE_COMMIT, quota.c appends the quota ledger and usage.c may write
 * the usage that waited in shared memory.  When the transaction had no XID
 * before the first of these writes, they are all it changed.  If every one
 * of them is of a kind that may be lost in a crash (usage or quota deltas
 * that waited in shared memory; quota usage of a quota-only transaction
 * with tenancy.synchronous_quota_commit off), the commit does not wait for
 * its WAL flush, as with synchronous_commit = off: a crash of the server or
 * the OS may forget such a commit made in the last few wal_writer_delay,
 * never a part of one.  Otherwise it waits as synchronous_commit says.
 *
 * synchronous_commit is read by RecordTransactionCommit() and
 * SyncRepWaitForLSN() after the PRE_COMMIT callbacks; the value set here is
 * put back at COMMIT or ABORT, before the transaction's settings end.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"

#include "tenancy.h"

typedef enum CommitWrites
{
	COMMIT_NO_WRITES,			/* nothing written yet at this commit */
	COMMIT_MAY_BE_LOST,			/* only writes that may be lost so far */
	COMMIT_DURABLE				/* something must survive a crash */
} CommitWrites;

static CommitWrites commit_writes = COMMIT_NO_WRITES;

/* synchronous_commit before it was turned off; -1 when untouched. */
static int	saved_synchronous_commit = -1;

static void
restore_synchronous_commit(void)
{
	if (saved_synchronous_commit >= 0)
	{
		synchronous_commit = saved_synchronous_commit;
		saved_synchronous_commit = -1;
	}
}

/* Call at PRE_COMMIT before writing bookkeeping. */
void
tenancy_commit_write_begin(void)
{
	if (commit_writes == COMMIT_NO_WRITES)
		commit_writes = TransactionIdIsValid(GetTopTransactionIdIfAny()) ?
			COMMIT_DURABLE : COMMIT_MAY_BE_LOST;
}

/*
 * Has this transaction written only bookkeeping that may be lost so far
 * (or nothing, and it has no XID)?  Then deltas of quota usage may wait in
 * shared memory instead of being written by its commit (quota.c).
 */
bool
tenancy_commit_only_bookkeeping(void)
{
	if (commit_writes == COMMIT_NO_WRITES)
		return !TransactionIdIsValid(GetTopTransactionIdIfAny());
	return commit_writes == COMMIT_MAY_BE_LOST;
}

/*
 * Call after the write: may_be_lost says whether what was written may be
 * forgotten by a crash.
 */
void
tenancy_commit_write_end(bool may_be_lost)
{
	if (!may_be_lost)
		commit_writes = COMMIT_DURABLE;
	if (commit_writes == COMMIT_DURABLE)
		restore_synchronous_commit();
	else if (saved_synchronous_commit < 0 &&
			 synchronous_commit > SYNCHRONOUS_COMMIT_OFF)
	{
		saved_synchronous_commit = synchronous_commit;
		synchronous_commit = SYNCHRONOUS_COMMIT_OFF;
	}
}

static void
commit_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			restore_synchronous_commit();
			commit_writes = COMMIT_NO_WRITES;
			break;
		default:
			break;
	}
}

/*
 * Work to do at backend exit: write what an area left waiting in shared
 * memory (usage sums, quota deltas), each in a transaction of its own.
 */
typedef struct ExitWork
{
	bool		(*needed) (void);
	void		(*work) (void);
} ExitWork;

#define MAX_EXIT_WORK 4

static ExitWork exit_work[MAX_EXIT_WORK];
static int	nexit_work = 0;
static bool exit_callback_registered = false;

/* Run work in a transaction of its own; an error is reported and exit goes on. */
static void
exit_transaction(void (*work) (void))
{
	AbortOutOfAnyTransaction();
	if (!IsUnderPostmaster || !OidIsValid(MyDatabaseId) || MyProc == NULL ||
		RecoveryInProgress())
		return;
	PG_TRY();
	{
		StartTransactionCommand();
		/* whatever the session's defaults: this one writes bookkeeping */
		XactIsoLevel = XACT_READ_COMMITTED;
		XactReadOnly = false;
		work();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
	}
	PG_END_TRY();
}

static void
commit_exit_callback(int code, Datum arg)
{
	for (int i = 0; i < nexit_work; i++)
		if (exit_work[i].needed())
			exit_transaction(exit_work[i].work);
}

/*
 * At backend exit, run work (in a transaction of its own) if needed() says
 * so then.  Call it before leaving anything waiting, at the latest at
 * PRE_COMMIT: it may fail, which COMMIT and ABORT callbacks must not.
 * Registering the same work again does nothing.
 */
void
tenancy_at_exit(bool (*needed) (void), void (*work) (void))
{
	for (int i = 0; i < nexit_work; i++)
		if (exit_work[i].work == work)
			return;
	if (nexit_work >= MAX_EXIT_WORK)
		elog(ERROR, "tenancy: too many exit writers");
	if (!exit_callback_registered)
	{
		before_shmem_exit(commit_exit_callback, (Datum) 0);
		exit_callback_registered = true;
	}
	exit_work[nexit_work].needed = needed;
	exit_work[nexit_work].work = work;
	nexit_work++;
}

/* Called from _PG_init. */
void
tenancy_commit_init(void)
{
	RegisterXactCallback(commit_xact_callback, NULL);
}
