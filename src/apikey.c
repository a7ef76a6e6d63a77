/*-------------------------------------------------------------------------
 *
 * apikey.c
 *		API keys: their format, verification, authentication, the binding
 *		of a session to a key, the key administration entry points, the
 *		failure counters and the log redaction of key-shaped strings.
 *
 * A key is 'tk_' + 32 random base62 characters + 6 base62 characters of
 * the standard CRC-32 (zlib's polynomial 0xEDB88320, core's pg_crc.h) of
 * the 35 characters before it, most significant digit first: 41 characters.
 * The format and the checksum are checked before any table look-up.  Only
 * the SHA-256 of a key is stored (core's cryptohash, through compat.h's
 * tenancy_sha256); it is looked up through the unique index
 * api_keys_key_hash_key with the table access API (no SPI) and compared
 * again with timingsafe_bcmp.
 *
 * The key cache: each backend keeps the api_keys rows it read (by key hash
 * and by key id; at most KEY_CACHE_MAX, then it starts afresh), whatever
 * their state, never an unknown key.  A statement trigger on
 * tenancy.api_keys (api_keys_changed, for UPDATE OF the columns a
 * verification reads, DELETE and TRUNCATE; not for last_used_at) sends a
 * relcache invalidation at commit; every backend processes it at the start
 * of its next transaction, and the relcache callback here then empties the
 * cache.  So revocation, rotation and deletion still take effect at the
 * next transaction of every session.  As catcache does, the cache is filled
 * only from a snapshot taken after the locks are held (so after pending
 * invalidations were processed), and not at all when an invalidation
 * arrived during the look-up.  Expiry is judged at every look-up against
 * the transaction's start, and the tenant's status through tenant.c's own
 * cache of tenant rows.  A cached row spares the index scan; the SHA-256
 * and the constant-time compare are done at every verification.
 *
 * The binding is the setting tenancy.session_binding ("<tenant>:<key>",
 * PGC_SUSET, guc.c), set by authenticate() with SET or SET LOCAL semantics.
 * tenancy_apikey_binding() validates it once per transaction (key not
 * revoked, not expired, tenant active) and caches the key's permissions
 * and scopes until the transaction ends or the binding changes; context.c
 * and keyperm.c use it.
 *
 * Writes (creating, revoking, rotating keys, last_used_at) are done through
 * SPI by internal SQL functions of the install script, run as the owner of
 * tenancy.api_keys after the caller's right was checked here, with the
 * caller's own identity: tenancy_admin members for any tenant, a session
 * bound by an admin key for its own tenant only.
 *
 * last_used_at: each backend remembers, per key, the last value it knows
 * to be stored; a successful verification notes the use when that value
 * is a minute old or more, and the commit of the transaction writes it
 * (PRE_COMMIT, never in a read-only, repeatable read or serializable
 * transaction, nor one that is prepared), so the column is right to within
 * a minute with at most one write a minute per key and backend.  The row
 * is locked for the commit only, never while the transaction that used
 * the key is open: revoking or rotating a key never waits for its users.
 *
 * Failures are counted by cause in the shared counters of usage.c
 * (tenancy_usage_count(), names "auth_failures:<cause>"), which are kept
 * by database: tenancy.stats shows the current database's only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/lmgr.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_crc.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "tenancy.h"

PG_FUNCTION_INFO_V1(tenancy_create_api_key);
PG_FUNCTION_INFO_V1(tenancy_verify_api_key);
PG_FUNCTION_INFO_V1(tenancy_authenticate);
PG_FUNCTION_INFO_V1(tenancy_logout);
PG_FUNCTION_INFO_V1(tenancy_revoke_api_key);
PG_FUNCTION_INFO_V1(tenancy_rotate_api_key);
PG_FUNCTION_INFO_V1(tenancy_auth_failures);
PG_FUNCTION_INFO_V1(tenancy_keys_visible_tenant);

/* The key format. */
#define KEY_MARK		"tk_"
#define KEY_MARK_LEN	3
#define KEY_RANDOM_LEN	32
#define KEY_BODY_LEN	(KEY_MARK_LEN + KEY_RANDOM_LEN)	/* what the CRC covers */
#define KEY_CHECK_LEN	6
#define KEY_LEN			(KEY_BODY_LEN + KEY_CHECK_LEN)	/* 41 */
#define KEY_PREFIX_LEN	11
/* Key-shaped strings redacted from the server log: tk_ + this many base62 */
#define REDACT_MIN_RUN	16

/* Column numbers of tenancy.api_keys, in the order the install script makes. */
#define Anum_keys_id			1
#define Anum_keys_tenant_id		2
#define Anum_keys_prefix		4
#define Anum_keys_key_hash		5
#define Anum_keys_permissions	6
#define Anum_keys_scopes		7
#define Anum_keys_expires_at	8
#define Anum_keys_last_used_at	9
#define Anum_keys_revoked_at	10

/* last_used_at is written at most once a minute per key and backend */
#define LAST_USED_RESOLUTION_US (60 * USECS_PER_SEC)

static const char base62_digits[] =
"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* Why a key was refused; the order of tenancy._auth_failures(). */
typedef enum KeyVerdict
{
	KEY_MALFORMED = 0,
	KEY_UNKNOWN,
	KEY_EXPIRED,
	KEY_REVOKED,
	KEY_TENANT_INACTIVE,
	KEY_NCAUSES,
	KEY_VALID = KEY_NCAUSES
} KeyVerdict;

static const char *const verdict_names[KEY_NCAUSES] = {
	"malformed", "unknown", "expired", "revoked", "tenant_inactive"
};

/* A row of tenancy.api_keys, as far as C needs it. */
typedef struct KeyRow
{
	pg_uuid_t	id;
	pg_uuid_t	tenant;
	char		prefix[KEY_PREFIX_LEN + 1];
	uint8		hash[PG_SHA256_DIGEST_LENGTH];
	bool		has_hash;		/* the stored hash is a SHA-256 */
	int			permissions;
	int			nscopes;
	char	  **scopes;
	bool		has_expiry;
	TimestampTz expires_at;
	bool		has_last_used;
	TimestampTz last_used_at;
	bool		revoked;
} KeyRow;

/*
 * The cache of key rows, by key hash and by key id (see the file header).
 * Both tables and the scopes of their rows live in key_cache_cxt.
 */
typedef struct KeyCacheEntry
{
	uint8		hash[PG_SHA256_DIGEST_LENGTH];	/* hash key */
	KeyRow		row;
} KeyCacheEntry;

typedef struct KeyIdEntry
{
	pg_uuid_t	id;				/* hash key */
	KeyRow		row;
} KeyIdEntry;

#define KEY_CACHE_MAX 8192

static MemoryContext key_cache_cxt = NULL;
static HTAB *key_cache_by_hash = NULL;
static HTAB *key_cache_by_id = NULL;
static Oid	key_cache_relid = InvalidOid;
static Oid	key_cache_pkey = InvalidOid;
static Oid	key_cache_hashidx = InvalidOid;
static bool key_cache_stale = true;
static bool key_cache_callback_registered = false;

/* The validated binding of this transaction (see tenancy_apikey_binding). */
static MemoryContext binding_cxt = NULL;
static bool binding_valid = false;
static char binding_for[2 * TENANCY_UUID_STRLEN + 2];
static TenancyKeyBinding binding_state;

/*
 * Backend-local: per key, the last_used_at value known to be stored, and
 * the uses of this transaction, written at its commit (key_uses_write).
 */
typedef struct KeyUseEntry
{
	pg_uuid_t	key;			/* hash key */
	TimestampTz known_stored;	/* 0: unknown */
	TimestampTz xact_use;		/* latest use to write at commit; 0: none */
	bool		written;		/* written by this transaction's PRE_COMMIT */
} KeyUseEntry;

static HTAB *key_use = NULL;

/* Keys whose xact_use is set, in TopTransactionContext; NIL when none. */
static List *xact_uses = NIL;

static emit_log_hook_type prev_emit_log_hook = NULL;

/* ---------------------------------------------------------------------
 * Shared memory
 * ---------------------------------------------------------------------
 */

/* Every SQL entry point: shared memory must be there (55000). */
static void
require_shmem(void)
{
	if (!tenancy_shmem_attached())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tenancy: shared memory is not attached"),
				 errhint("Add tenancy to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* ---------------------------------------------------------------------
 * The key format
 * ---------------------------------------------------------------------
 */

static bool
is_base62(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/*
 * The standard CRC-32 (ISO-HDLC, zlib's crc32()): reflected 0xEDB88320,
 * core's table-driven "traditional" CRC-32.
 */
static uint32
crc32_standard(const char *data, size_t len)
{
	pg_crc32	crc;

	INIT_TRADITIONAL_CRC32(crc);
	COMP_TRADITIONAL_CRC32(crc, data, len);
	FIN_TRADITIONAL_CRC32(crc);
	return crc;
}

/* The 6 base62 digits of a 32-bit value, most significant first. */
static void
encode_checksum(uint32 value, char *out)
{
	int			i;

	for (i = KEY_CHECK_LEN - 1; i >= 0; i--)
	{
		out[i] = base62_digits[value % 62];
		value /= 62;
	}
}

/* Is this exactly a key: mark, length, alphabet and checksum? */
static bool
key_well_formed(const char *s, size_t len)
{
	char		check[KEY_CHECK_LEN];
	size_t		i;

	if (len != KEY_LEN || memcmp(s, KEY_MARK, KEY_MARK_LEN) != 0)
		return false;
	for (i = KEY_MARK_LEN; i < KEY_LEN; i++)
		if (!is_base62(s[i]))
			return false;
	encode_checksum(crc32_standard(s, KEY_BODY_LEN), check);
	return memcmp(check, s + KEY_BODY_LEN, KEY_CHECK_LEN) == 0;
}

/*
 * Make a new key into out (KEY_LEN + 1 bytes).  Random characters come
 * from pg_strong_random by rejection sampling: a byte below 248 (4 * 62)
 * gives byte % 62, any other byte is dropped, so every digit is uniform.
 */
static void
key_generate(char *out)
{
	uint8		buf[64];
	size_t		pos = sizeof(buf);
	int			got = 0;

	memcpy(out, KEY_MARK, KEY_MARK_LEN);
	while (got < KEY_RANDOM_LEN)
	{
		uint8		b;

		if (pos == sizeof(buf))
		{
			if (!pg_strong_random(buf, sizeof(buf)))
				ereport(ERROR,
						(errcode(ERRCODE_INTERNAL_ERROR),
						 errmsg("tenancy: could not generate random bytes for an API key")));
			pos = 0;
		}
		b = buf[pos++];
		if (b < 248)
			out[KEY_MARK_LEN + got++] = base62_digits[b % 62];
	}
	encode_checksum(crc32_standard(out, KEY_BODY_LEN), out + KEY_BODY_LEN);
	out[KEY_LEN] = '\0';
	explicit_bzero(buf, sizeof(buf));
}

/* SHA-256 of a key. */
static void
key_sha256(const char *key, size_t len, uint8 *out)
{
	if (!tenancy_sha256((const uint8 *) key, len, out))
		elog(ERROR, "tenancy: could not compute a SHA-256 digest");
}

/* ---------------------------------------------------------------------
 * Looking keys up, without SPI
 * ---------------------------------------------------------------------
 */

/* Decode a text[] of permissions into TENANCY_KEY_* bits. */
static int
permission_bits(ArrayType *arr)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;
	int			bits = 0;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (i = 0; i < n; i++)
	{
		char	   *p;

		if (nulls[i])
			continue;
		p = TextDatumGetCString(elems[i]);
		if (strcmp(p, "read") == 0)
			bits |= TENANCY_KEY_READ;
		else if (strcmp(p, "write") == 0)
			bits |= TENANCY_KEY_WRITE;
		else if (strcmp(p, "admin") == 0)
			bits |= TENANCY_KEY_ADMIN;
	}
	return bits;
}

/* Decode a text[] of scopes into a C array (in the current context). */
static int
scope_list(ArrayType *arr, char ***out)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;
	int			k = 0;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	*out = palloc(sizeof(char *) * Max(n, 1));
	for (i = 0; i < n; i++)
		if (!nulls[i])
			(*out)[k++] = TextDatumGetCString(elems[i]);
	return k;
}

static void
key_from_tuple(HeapTuple tuple, TupleDesc desc, KeyRow *out)
{
	bool		isnull;
	Datum		d;
	bytea	   *hash;
	char	   *s;

	memset(out, 0, sizeof(KeyRow));
	d = heap_getattr(tuple, Anum_keys_id, desc, &isnull);
	memcpy(&out->id, DatumGetUUIDP(d), sizeof(pg_uuid_t));
	d = heap_getattr(tuple, Anum_keys_tenant_id, desc, &isnull);
	memcpy(&out->tenant, DatumGetUUIDP(d), sizeof(pg_uuid_t));
	d = heap_getattr(tuple, Anum_keys_prefix, desc, &isnull);
	if (!isnull)
	{
		s = TextDatumGetCString(d);
		strlcpy(out->prefix, s, sizeof(out->prefix));
	}
	d = heap_getattr(tuple, Anum_keys_key_hash, desc, &isnull);
	if (!isnull)
	{
		hash = DatumGetByteaPP(d);
		if (VARSIZE_ANY_EXHDR(hash) == PG_SHA256_DIGEST_LENGTH)
		{
			memcpy(out->hash, VARDATA_ANY(hash), PG_SHA256_DIGEST_LENGTH);
			out->has_hash = true;
		}
	}
	d = heap_getattr(tuple, Anum_keys_permissions, desc, &isnull);
	if (!isnull)
		out->permissions = permission_bits(DatumGetArrayTypeP(d));
	d = heap_getattr(tuple, Anum_keys_scopes, desc, &isnull);
	if (!isnull)
		out->nscopes = scope_list(DatumGetArrayTypeP(d), &out->scopes);
	d = heap_getattr(tuple, Anum_keys_expires_at, desc, &isnull);
	out->has_expiry = !isnull;
	if (!isnull)
		out->expires_at = DatumGetTimestampTz(d);
	d = heap_getattr(tuple, Anum_keys_last_used_at, desc, &isnull);
	out->has_last_used = !isnull;
	if (!isnull)
		out->last_used_at = DatumGetTimestampTz(d);
	(void) heap_getattr(tuple, Anum_keys_revoked_at, desc, &isnull);
	out->revoked = !isnull;
}

static void
convert_key_row(HeapTuple tuple, TupleDesc desc, void *out)
{
	key_from_tuple(tuple, desc, (KeyRow *) out);
}

/*
 * Scan one unique index of tenancy.api_keys for a single value (see
 * tenancy_fetch_unique: fresh is for the cache).  Bypasses privileges and
 * row level security: callers decide what to reveal.
 */
static bool
key_scan(Oid relid, Oid indexid, AttrNumber attno, RegProcedure eqproc,
		 Datum value, bool fresh, KeyRow *out)
{
	return tenancy_fetch_unique(relid, indexid, attno, eqproc, InvalidOid, value,
								fresh, convert_key_row, out);
}

/* Copy a row with its scopes into cxt. */
static void
key_row_copy(KeyRow *dst, const KeyRow *src, MemoryContext cxt)
{
	int			i;

	memcpy(dst, src, sizeof(KeyRow));
	dst->scopes = MemoryContextAlloc(cxt, sizeof(char *) * Max(src->nscopes, 1));
	for (i = 0; i < src->nscopes; i++)
		dst->scopes[i] = MemoryContextStrdup(cxt, src->scopes[i]);
}

/* Relcache callback: a change of tenancy.api_keys empties the cache. */
static void
key_cache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == key_cache_relid)
		key_cache_stale = true;
}

/*
 * Make the cache ready for a look-up, emptying it if it went stale.
 * Returns false when tenancy.api_keys does not exist in this database.
 */
static bool
key_cache_prepare(void)
{
	HASHCTL		ctl;

	if (!key_cache_callback_registered)
	{
		CacheRegisterRelcacheCallback(key_cache_callback, (Datum) 0);
		key_cache_callback_registered = true;
	}
	if (!key_cache_stale && key_cache_by_hash != NULL)
		return true;

	if (key_cache_cxt == NULL)
		key_cache_cxt = AllocSetContextCreate(TopMemoryContext, "tenancy key cache",
											  ALLOCSET_DEFAULT_SIZES);
	/* the tables live in key_cache_cxt: resetting it drops them */
	MemoryContextReset(key_cache_cxt);
	key_cache_by_hash = NULL;
	key_cache_by_id = NULL;
	key_cache_stale = false;
	key_cache_relid = tenancy_relation_oid("api_keys", true);
	key_cache_pkey = tenancy_relation_oid("api_keys_pkey", true);
	key_cache_hashidx = tenancy_relation_oid("api_keys_key_hash_key", true);
	if (!OidIsValid(key_cache_relid) || !OidIsValid(key_cache_pkey) ||
		!OidIsValid(key_cache_hashidx))
	{
		key_cache_stale = true; /* look again next time */
		return false;
	}

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = PG_SHA256_DIGEST_LENGTH;
	ctl.entrysize = sizeof(KeyCacheEntry);
	ctl.hcxt = key_cache_cxt;
	key_cache_by_hash = hash_create("tenancy keys by hash", 256, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.keysize = sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(KeyIdEntry);
	key_cache_by_id = hash_create("tenancy keys by id", 256, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	return true;
}

/*
 * Look a key row up by hash (hash != NULL) or by id, through the cache.
 * The row returned is a copy in the current memory context.  A row is
 * cached only when it was read with a snapshot taken after every
 * invalidation received so far was processed and no invalidation arrived
 * during the look-up (as catcache does); whatever its state: revoked,
 * expired (judged at each look-up against the transaction's start) or
 * valid.  Unknown keys are never cached.
 */
static bool
key_lookup(const uint8 *hash, const pg_uuid_t *id, KeyRow *out)
{
	KeyRow		row;
	KeyCacheEntry *entry = NULL;
	KeyIdEntry *identry = NULL;
	bytea	   *b = NULL;
	Datum		value;
	bool		found;

	if (hash != NULL)
	{
		b = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
		SET_VARSIZE(b, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
		memcpy(VARDATA(b), hash, PG_SHA256_DIGEST_LENGTH);
	}
	value = hash != NULL ? PointerGetDatum(b) : UUIDPGetDatum(id);

	/* No fresh snapshot can be taken in parallel mode: no cache there. */
	if (IsInParallelMode())
	{
		Oid			relid = tenancy_relation_oid("api_keys", true);
		Oid			indexid = tenancy_relation_oid(hash != NULL ? "api_keys_key_hash_key" :
												   "api_keys_pkey", true);

		if (!OidIsValid(relid) || !OidIsValid(indexid))
			return false;
		return hash != NULL ?
			key_scan(relid, indexid, Anum_keys_key_hash, F_BYTEAEQ, value, false, out) :
			key_scan(relid, indexid, Anum_keys_id, F_UUID_EQ, value, false, out);
	}

	if (!key_cache_prepare())
		return false;
	if (hash != NULL)
		entry = hash_search(key_cache_by_hash, hash, HASH_FIND, NULL);
	else
		identry = hash_search(key_cache_by_id, id, HASH_FIND, NULL);
	if (entry != NULL || identry != NULL)
	{
		key_row_copy(out, entry != NULL ? &entry->row : &identry->row,
					 CurrentMemoryContext);
		return true;
	}

	found = hash != NULL ?
		key_scan(key_cache_relid, key_cache_hashidx, Anum_keys_key_hash, F_BYTEAEQ,
				 value, true, &row) :
		key_scan(key_cache_relid, key_cache_pkey, Anum_keys_id, F_UUID_EQ,
				 value, true, &row);
	if (!found)
		return false;
	/* An invalidation that arrived during the look-up: do not keep it. */
	if (!key_cache_stale)
	{
		if (hash_get_num_entries(key_cache_by_id) >= KEY_CACHE_MAX)
			key_cache_stale = true;
		else
		{
			/* a row whose stored hash is no SHA-256 matches no key */
			if (row.has_hash)
			{
				entry = hash_search(key_cache_by_hash, row.hash, HASH_ENTER, &found);
				key_row_copy(&entry->row, &row, key_cache_cxt);
			}
			identry = hash_search(key_cache_by_id, &row.id, HASH_ENTER, &found);
			key_row_copy(&identry->row, &row, key_cache_cxt);
		}
	}
	memcpy(out, &row, sizeof(KeyRow));
	return true;
}

static bool
key_lookup_id(const pg_uuid_t *id, KeyRow *out)
{
	return key_lookup(NULL, id, out);
}

static bool
key_lookup_hash(const uint8 *hash, KeyRow *out)
{
	return key_lookup(hash, NULL, out);
}

/* Has the key expired, as of the start of this transaction? */
static bool
key_expired(const KeyRow *row)
{
	return row->has_expiry && row->expires_at <= GetCurrentTransactionStartTimestamp();
}

/* ---------------------------------------------------------------------
 * Verification
 * ---------------------------------------------------------------------
 */

/*
 * Judge a key given as a text datum.  The length is read from the header
 * first, so a huge value is refused without being detoasted; format and
 * checksum are checked before the table is.  On KEY_VALID *row is filled.
 * *prefix gets the display prefix when the string is well formed, else "".
 */
static KeyVerdict
key_verify(Datum keydatum, KeyRow *row, char *prefix)
{
	Size		len = toast_raw_datum_size(keydatum) - VARHDRSZ;
	text	   *t;
	const char *s;
	uint8		hash[PG_SHA256_DIGEST_LENGTH];
	TenancyTenant tenant;

	prefix[0] = '\0';
	if (len != KEY_LEN)
		return KEY_MALFORMED;
	t = DatumGetTextPP(keydatum);
	s = VARDATA_ANY(t);
	if (VARSIZE_ANY_EXHDR(t) != KEY_LEN || !key_well_formed(s, KEY_LEN))
		return KEY_MALFORMED;
	memcpy(prefix, s, KEY_PREFIX_LEN);
	prefix[KEY_PREFIX_LEN] = '\0';

	key_sha256(s, KEY_LEN, hash);
	if (!key_lookup_hash(hash, row) ||
		timingsafe_bcmp(row->hash, hash, PG_SHA256_DIGEST_LENGTH) != 0)
		return KEY_UNKNOWN;
	if (row->revoked)
		return KEY_REVOKED;
	if (key_expired(row))
		return KEY_EXPIRED;
	if (!tenancy_tenant_lookup(&row->tenant, &tenant) ||
		strcmp(tenant.status, "active") != 0)
		return KEY_TENANT_INACTIVE;
	return KEY_VALID;
}

/*
 * Count a failure and log it at LOG with the display prefix only (none
 * for a malformed string, which may be anything).  No STATEMENT or
 * CONTEXT line: the statement holds the key.  LOG_SERVER_ONLY: a client
 * that lowers client_min_messages must not learn the cause.
 */
static void
report_failure(KeyVerdict verdict, const char *prefix, const char *caller)
{
	char		counter[64];

	snprintf(counter, sizeof(counter), "auth_failures:%s", verdict_names[verdict]);
	tenancy_usage_count(counter, 1);
	if (prefix[0] != '\0')
		ereport(LOG_SERVER_ONLY,
				(errmsg("tenancy: API key refused by %s: %s", caller, verdict_names[verdict]),
				 errdetail("Key prefix %s.", prefix),
				 errhidestmt(true), errhidecontext(true)));
	else
		ereport(LOG_SERVER_ONLY,
				(errmsg("tenancy: API key refused by %s: %s", caller, verdict_names[verdict]),
				 errdetail("The string given is not in the format of an API key."),
				 errhidestmt(true), errhidecontext(true)));
}

/* Run one statement through SPI as the owner of tenancy.api_keys. */
static Datum
spi_as_owner(const char *sql, int nargs, Oid *argtypes, Datum *values,
			 const char *nulls, int expected, bool *isnull)
{
	Oid			relid = tenancy_relation_oid("api_keys", true);
	Oid			owner;
	Oid			save_user;
	int			save_sec;
	int			rc;
	Datum		result = (Datum) 0;

	*isnull = true;
	if (!OidIsValid(relid))
		elog(ERROR, "tenancy: relation tenancy.api_keys is missing");
	owner = tenancy_relation_owner(relid, false);

	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tenancy: SPI_connect failed");
	rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, false, 0);
	if (rc != expected)
		elog(ERROR, "tenancy: unexpected SPI result %d", rc);
	if (rc == SPI_OK_SELECT && SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, isnull);

		if (!*isnull)
		{
			Oid			typid = SPI_gettypeid(SPI_tuptable->tupdesc, 1);
			int16		typlen;
			bool		typbyval;

			get_typlenbyval(typid, &typlen, &typbyval);
			result = SPI_datumTransfer(d, typbyval, typlen);
		}
	}
	else if (rc != SPI_OK_SELECT)
		*isnull = (SPI_processed == 0);
	SPI_finish();
	SetUserIdAndSecContext(save_user, save_sec);
	return result;
}

/*
 * A key was used: when the last_used_at known to be stored is a minute
 * old or more, remember the use, for the commit of this transaction to
 * write (key_uses_write).  Nothing is written here: a write would keep
 * the key's row locked until the transaction ends, and whoever revokes or
 * rotates the key, or deletes its tenant, would wait for it.
 */
static void
key_touch(const KeyRow *row)
{
	TimestampTz now = GetCurrentTimestamp();
	KeyUseEntry *entry;
	bool		found;

	if (IsParallelWorker())
		return;					/* its uses cannot reach the leader's commit */
	if (key_use == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(pg_uuid_t);
		ctl.entrysize = sizeof(KeyUseEntry);
		key_use = hash_create("tenancy key use", 64, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	entry = hash_search(key_use, &row->id, HASH_ENTER, &found);
	if (!found)
	{
		entry->known_stored = 0;
		entry->xact_use = 0;
		entry->written = false;
	}
	if (row->has_last_used && row->last_used_at > entry->known_stored)
		entry->known_stored = row->last_used_at;
	if (now - entry->known_stored < LAST_USED_RESOLUTION_US)
		return;
	if (entry->xact_use == 0)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);
		pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

		memcpy(id, &row->id, sizeof(pg_uuid_t));
		xact_uses = lappend(xact_uses, id);
		MemoryContextSwitchTo(oldcxt);
	}
	entry->xact_use = now;
}

/*
 * The UPDATE of key_uses_write, as the owner of tenancy.api_keys: ids and
 * ats are arrays of key ids and times of use.  A row another session has
 * locked (it is revoking, rotating or writing the key) is skipped.  Fills
 * got and got_at with the keys written and the value they now store;
 * returns how many there are (at most max).
 */
static int
key_uses_update(Oid relid, Datum ids, Datum ats, int max,
				pg_uuid_t *got, TimestampTz *got_at)
{
	Oid			argtypes[2] = {UUIDARRAYOID, TIMESTAMPTZARRAYOID};
	Datum		values[2];
	Oid			save_user;
	int			save_sec;
	int			rc;
	int			n;
	int			i;

	values[0] = ids;
	values[1] = ats;
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(tenancy_relation_owner(relid, false),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "tenancy: SPI_connect failed");
	rc = SPI_execute_with_args("UPDATE tenancy.api_keys k"
							   "   SET last_used_at = GREATEST(k.last_used_at, u.at)"
							   "  FROM (SELECT id FROM tenancy.api_keys"
							   "         WHERE id OPERATOR(pg_catalog.=) ANY ($1)"
							   "           FOR NO KEY UPDATE SKIP LOCKED) s,"
							   "       ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) u(id, at)"
							   " WHERE k.id OPERATOR(pg_catalog.=) s.id"
							   "   AND u.id OPERATOR(pg_catalog.=) s.id"
							   " RETURNING k.id, k.last_used_at",
							   2, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "tenancy: unexpected SPI result %d", rc);
	n = (int) Min(SPI_processed, (uint64) max);
	for (i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		d;

		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		memcpy(&got[i], DatumGetUUIDP(d), sizeof(pg_uuid_t));
		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
		got_at[i] = isnull ? 0 : DatumGetTimestampTz(d);
	}
	SPI_finish();
	SetUserIdAndSecContext(save_user, save_sec);
	return n;
}

/*
 * The uses of this transaction as two arrays for key_uses_update: key ids
 * (uuid[]) and times of use (timestamptz[]).  Returns how many.
 */
static int
key_uses_arrays(Datum *ids, Datum *ats)
{
	int			n = list_length(xact_uses);
	Datum	   *id = palloc(sizeof(Datum) * n);
	Datum	   *at = palloc(sizeof(Datum) * n);
	int			k = 0;
	ListCell   *lc;

	foreach(lc, xact_uses)
	{
		KeyUseEntry *entry = hash_search(key_use, lfirst(lc), HASH_FIND, NULL);

		if (entry == NULL || entry->xact_use == 0)
			continue;
		id[k] = UUIDPGetDatum(&entry->key);
		at[k] = TimestampTzGetDatum(entry->xact_use);
		k++;
	}
	*ids = PointerGetDatum(construct_array(id, k, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
	*ats = PointerGetDatum(construct_array(at, k, TIMESTAMPTZOID, sizeof(TimestampTz),
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	return k;
}

/*
 * PRE_COMMIT: write last_used_at of the keys this transaction used (see
 * key_touch), in one UPDATE, so that their rows are locked for the commit
 * only.  Not where it cannot write, nor under a transaction snapshot (a
 * concurrent update of a row would raise a serialization failure), nor in
 * parallel mode.  It never makes the commit wait or fail: the table must
 * be lockable at once, rows locked by others are skipped, and any error
 * rolls back an internal subtransaction and is logged.  A key not written
 * is written at a later use.  What is written is bookkeeping a crash may
 * lose (commit.c): a commit that wrote nothing else does not wait for its
 * WAL flush for it.
 */
static void
key_uses_write(void)
{
	int			n = list_length(xact_uses);
	Datum		ids;
	Datum		ats;
	pg_uuid_t  *got;
	TimestampTz *got_at;
	volatile int ngot = 0;
	int			i;
	Oid			relid;
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	if (n == 0 || key_use == NULL)
		return;
	if (XactReadOnly || RecoveryInProgress() || IsInParallelMode() ||
		IsolationUsesXactSnapshot())
		return;
	relid = tenancy_relation_oid("api_keys", true);
	if (!OidIsValid(relid) ||
		!ConditionalLockRelationOid(relid, RowExclusiveLock) ||
		!ConditionalLockRelationOid(relid, RowShareLock))
		return;
	n = key_uses_arrays(&ids, &ats);
	if (n == 0)
		return;
	got = palloc(sizeof(pg_uuid_t) * n);
	got_at = palloc(sizeof(TimestampTz) * n);

	tenancy_commit_write_begin();
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		ngot = key_uses_update(relid, ids, ats, n, got, got_at);
		PopActiveSnapshot();
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		ngot = 0;
		ereport(LOG,
				(errmsg("tenancy: last_used_at of API keys not written at commit: %s",
						edata->message),
				 errhidestmt(true)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	tenancy_commit_write_end(true);

	for (i = 0; i < ngot; i++)
	{
		KeyUseEntry *entry = hash_search(key_use, &got[i], HASH_FIND, NULL);

		if (entry != NULL)
		{
			entry->known_stored = got_at[i];
			entry->written = true;
		}
	}
}

/*
 * The transaction ended: forget its uses.  On abort, forget too what its
 * commit wrote (a failure after PRE_COMMIT rolled it back): the next use
 * of such a key writes again.
 */
static void
key_uses_end(bool aborted)
{
	ListCell   *lc;

	if (key_use != NULL)
		foreach(lc, xact_uses)
		{
			KeyUseEntry *entry = hash_search(key_use, lfirst(lc), HASH_FIND, NULL);

			if (entry == NULL)
				continue;
			if (aborted && entry->written)
				(void) hash_search(key_use, lfirst(lc), HASH_REMOVE, NULL);
			else
			{
				entry->xact_use = 0;
				entry->written = false;
			}
		}
	xact_uses = NIL;
}

/*
 * The row type of verify_api_key's result, built and blessed once per
 * backend: the function's result type is fixed, and building it from
 * pg_proc costs more than the verification of a cached key.
 */
static TupleDesc
verify_result_desc(FunctionCallInfo fcinfo)
{
	static TupleDesc desc = NULL;
	TupleDesc	tupdesc;
	MemoryContext oldcxt;

	if (desc != NULL)
		return desc;
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "tenancy: return type must be a row type");
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	tupdesc = CreateTupleDescCopy(tupdesc);
	MemoryContextSwitchTo(oldcxt);
	desc = BlessTupleDesc(tupdesc);
	return desc;
}

/*
 * SQL: tenancy.verify_api_key(key text) RETURNS TABLE(tenant_id uuid,
 * key_id uuid, permissions text[], scopes text[]).  No row for a bad key;
 * never raises for one.
 */
Datum
tenancy_verify_api_key(PG_FUNCTION_ARGS)
{
	FuncCallContext *funcctx;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext oldcxt;
		KeyRow		row;
		char		prefix[KEY_PREFIX_LEN + 1];
		KeyVerdict	verdict;

		require_shmem();
		funcctx = SRF_FIRSTCALL_INIT();
		funcctx->tuple_desc = verify_result_desc(fcinfo);
		funcctx->max_calls = 0;
		if (!PG_ARGISNULL(0))
		{
			verdict = key_verify(PG_GETARG_DATUM(0), &row, prefix);
			if (verdict != KEY_VALID)
				report_failure(verdict, prefix, "verify_api_key");
			else
			{
				Datum		values[4];
				bool		nulls[4] = {false, false, false, false};
				Datum		perms[3];
				int			np = 0;
				Datum	   *scopes;
				int			i;
				HeapTuple	tuple;

				key_touch(&row);
				oldcxt = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
				values[0] = UUIDPGetDatum(&row.tenant);
				values[1] = UUIDPGetDatum(&row.id);
				if (row.permissions & TENANCY_KEY_READ)
					perms[np++] = CStringGetTextDatum("read");
				if (row.permissions & TENANCY_KEY_WRITE)
					perms[np++] = CStringGetTextDatum("write");
				if (row.permissions & TENANCY_KEY_ADMIN)
					perms[np++] = CStringGetTextDatum("admin");
				values[2] = PointerGetDatum(construct_array(perms, np, TEXTOID, -1, false, TYPALIGN_INT));
				scopes = palloc(sizeof(Datum) * Max(row.nscopes, 1));
				for (i = 0; i < row.nscopes; i++)
					scopes[i] = CStringGetTextDatum(row.scopes[i]);
				values[3] = PointerGetDatum(construct_array(scopes, row.nscopes, TEXTOID, -1, false, TYPALIGN_INT));
				tuple = heap_form_tuple(funcctx->tuple_desc, values, nulls);
				funcctx->user_fctx = (void *) HeapTupleGetDatum(tuple);
				funcctx->max_calls = 1;
				MemoryContextSwitchTo(oldcxt);
			}
		}
		else
			report_failure(KEY_MALFORMED, "", "verify_api_key");
	}
	funcctx = SRF_PERCALL_SETUP();
	if (funcctx->call_cntr < funcctx->max_calls)
		SRF_RETURN_NEXT(funcctx, (Datum) funcctx->user_fctx);
	SRF_RETURN_DONE(funcctx);
}

/* ---------------------------------------------------------------------
 * Authentication and the binding
 * ---------------------------------------------------------------------
 */

static void
set_binding(const char *binding, const char *tenant, bool is_local)
{
	GucAction	action = is_local ? GUC_ACTION_LOCAL : GUC_ACTION_SET;

	/* The binding first: app.tenant_id's check hook reads it. */
	(void) set_config_option("tenancy.session_binding", binding,
							 PGC_SUSET, PGC_S_SESSION, action, true, 0, false);
	(void) set_config_option("app.tenant_id", tenant,
							 PGC_SUSET, PGC_S_SESSION, action, true, 0, false);
	binding_valid = false;
}

/*
 * SQL: tenancy.authenticate(key text, is_local boolean DEFAULT false)
 * RETURNS uuid.  Binds the session (or the transaction) to the key's
 * tenant, permissions and scopes.  A bad key: 28000, one message for every
 * cause, without the key, without a STATEMENT line in the server log.
 */
Datum
tenancy_authenticate(PG_FUNCTION_ARGS)
{
	bool		is_local = PG_ARGISNULL(1) ? false : PG_GETARG_BOOL(1);
	KeyRow		row;
	char		prefix[KEY_PREFIX_LEN + 1];
	KeyVerdict	verdict;
	char		tenant[TENANCY_UUID_STRLEN + 1];
	char		binding[2 * TENANCY_UUID_STRLEN + 2];
	pg_uuid_t  *result;

	require_shmem();
	if (PG_ARGISNULL(0))
	{
		verdict = KEY_MALFORMED;
		prefix[0] = '\0';
	}
	else
		verdict = key_verify(PG_GETARG_DATUM(0), &row, prefix);
	if (verdict != KEY_VALID)
	{
		report_failure(verdict, prefix, "authenticate");
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("tenancy: invalid API key"),
				 errhint("Check the key, or ask an administrator of the tenant for a new one."),
				 errhidestmt(true), errhidecontext(true)));
	}

	tenancy_uuid_format(&row.tenant, tenant);
	tenancy_uuid_format(&row.id, binding);
	memmove(binding + TENANCY_UUID_STRLEN + 1, binding, TENANCY_UUID_STRLEN + 1);
	memcpy(binding, tenant, TENANCY_UUID_STRLEN);
	binding[TENANCY_UUID_STRLEN] = ':';
	set_binding(binding, tenant, is_local);

	key_touch(&row);
	tenancy_usage_record(&row.tenant, "authentications", 1, false);

	result = palloc(sizeof(pg_uuid_t));
	memcpy(result, &row.tenant, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(result);
}

/* SQL: tenancy.logout(): clears the binding and the context. */
Datum
tenancy_logout(PG_FUNCTION_ARGS)
{
	require_shmem();
	set_binding("", "", false);
	PG_RETURN_VOID();
}

/*
 * Raise for a bound key that expired or whose tenant is not active (the
 * state tenancy_apikey_binding judges once per transaction).
 */
static void
check_key_state(const pg_uuid_t *tenant, const KeyRow *row)
{
	TenancyTenant t;

	if (key_expired(row))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("tenancy: the API key of this session has expired"),
				 errhint("Call tenancy.logout(), then tenancy.authenticate() with a valid key.")));
	if (!tenancy_tenant_lookup(tenant, &t))
		ereport(ERROR,
				(errcode(ERRCODE_TENANCY_TENANT_NOT_ACTIVE),
				 errmsg("tenancy: tenant is deleted"),
				 errdetail("The tenant of the API key of this session no longer exists.")));
	if (strcmp(t.status, "active") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_TENANCY_TENANT_NOT_ACTIVE),
				 errmsg("tenancy: tenant is %s", t.status),
				 errdetail("The tenant of the API key of this session is %s; its data cannot be accessed.", t.status),
				 errhint("An administrator can call tenancy.activate_tenant() or tenancy.update_tenant().")));
}

/*
 * The key this session or transaction is bound to, validated once per
 * transaction: NULL when not bound.  A revoked, deleted or expired key:
 * 28000; a tenant that is not active: TN003.  The result lives until the
 * transaction ends or the binding changes.  A parallel worker reads the key
 * again for its permissions and scopes (keyperm.c); when its leader
 * validated the binding in this transaction (tenancy.context_checked, see
 * context.c) it takes the leader's word for the key's and the tenant's
 * state, which a later snapshot could see changed one transaction early.
 */
const TenancyKeyBinding *
tenancy_apikey_binding(void)
{
	pg_uuid_t	tenant;
	pg_uuid_t	key;
	KeyRow		row;
	MemoryContext oldcxt;
	bool		found;
	bool		leader_checked;

	if (!tenancy_context_binding(&tenant, &key))
		return NULL;
	if (binding_valid && strcmp(binding_for, tenancy_guc_session_binding) == 0)
		return &binding_state;

	if (binding_cxt == NULL)
		binding_cxt = AllocSetContextCreate(TopMemoryContext, "tenancy key binding",
											ALLOCSET_SMALL_SIZES);
	MemoryContextReset(binding_cxt);
	oldcxt = MemoryContextSwitchTo(binding_cxt);
	found = key_lookup_id(&key, &row);
	MemoryContextSwitchTo(oldcxt);
	leader_checked = IsParallelWorker() && tenancy_context_leader_checked();

	if (!found || (row.revoked && !leader_checked) ||
		memcmp(row.tenant.data, tenant.data, UUID_LEN) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("tenancy: the API key of this session has been revoked"),
				 errhint("Call tenancy.logout(), then tenancy.authenticate() with a valid key.")));
	if (!leader_checked)
		check_key_state(&tenant, &row);

	memcpy(&binding_state.tenant, &tenant, sizeof(pg_uuid_t));
	memcpy(&binding_state.key, &key, sizeof(pg_uuid_t));
	binding_state.permissions = row.permissions;
	binding_state.nscopes = row.nscopes;
	binding_state.scopes = row.scopes;
	strlcpy(binding_for, tenancy_guc_session_binding, sizeof(binding_for));
	binding_valid = true;
	return &binding_state;
}

/* Called by context.c once per transaction before a bound context is used. */
void
tenancy_apikey_validate_binding(const pg_uuid_t *tenant, const pg_uuid_t *key)
{
	(void) tenancy_apikey_binding();
}

/* ---------------------------------------------------------------------
 * Administration: create, revoke, rotate
 * ---------------------------------------------------------------------
 */

static void
raise_not_allowed(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("tenancy: permission denied to manage API keys of this tenant"),
			 errdetail("API keys are managed by members of tenancy_admin, and by a session authenticated with an admin key of the same tenant."),
			 errhint("Authenticate with an API key that has the admin permission, or ask a member of tenancy_admin.")));
}

/* Is this session bound by an admin key of that tenant? */
static bool
bound_admin_of(const pg_uuid_t *tenant)
{
	const TenancyKeyBinding *b = tenancy_apikey_binding();

	return b != NULL && (b->permissions & TENANCY_KEY_ADMIN) != 0 &&
		memcmp(b->tenant.data, tenant->data, UUID_LEN) == 0;
}

/*
 * Find a key by id for revoke/rotate and check the caller may manage it.
 * An administrator is told when the key does not exist (22023); anyone
 * else gets the same 42501 whether it exists or not.
 */
static void
managed_key(FunctionCallInfo fcinfo, KeyRow *row)
{
	pg_uuid_t	id;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: key_id must not be null"),
				 errhint("Pass the id of the key, as tenancy.api_keys lists it.")));
	memcpy(&id, PG_GETARG_UUID_P(0), sizeof(pg_uuid_t));
	if (tenancy_context_is_admin())
	{
		if (!key_lookup_id(&id, row))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("tenancy: unknown API key"),
					 errdetail("No API key has the id %s.", DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&id)))),
					 errhint("Pass the id of a key of tenancy.api_keys.")));
		return;
	}
	if (tenancy_apikey_binding() == NULL || !key_lookup_id(&id, row) ||
		!bound_admin_of(&row->tenant))
		raise_not_allowed();
}

/* Generate a key; its prefix and hash as datums for SPI. */
static void
new_key_datums(char *key, Datum *prefix, Datum *hash)
{
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	bytea	   *b = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);

	key_generate(key);
	key_sha256(key, KEY_LEN, digest);
	SET_VARSIZE(b, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	memcpy(VARDATA(b), digest, PG_SHA256_DIGEST_LENGTH);
	*hash = PointerGetDatum(b);
	*prefix = PointerGetDatum(cstring_to_text_with_len(key, KEY_PREFIX_LEN));
}

/* The new key as the function's result; the plaintext buffer is wiped. */
static text *
key_result(char *key)
{
	text	   *result = cstring_to_text_with_len(key, KEY_LEN);

	explicit_bzero(key, KEY_LEN + 1);
	return result;
}

/*
 * SQL: tenancy.create_api_key(tenant text, name text, permissions text[]
 * DEFAULT '{read,write}', scopes text[] DEFAULT '{}', expires_at
 * timestamptz DEFAULT NULL) RETURNS text: the key, shown this once.
 */
Datum
tenancy_create_api_key(PG_FUNCTION_ARGS)
{
	TenancyTenant tenant;
	char		key[KEY_LEN + 1];
	Oid			argtypes[7] = {UUIDOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID,
	TIMESTAMPTZOID, TEXTOID, BYTEAOID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	bool		isnull;
	int			i;

	require_shmem();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenancy: tenant must not be null"),
				 errhint("Pass a tenant's slug or id.")));
	if (tenancy_context_is_admin())
		tenancy_tenant_resolve(text_to_cstring(PG_GETARG_TEXT_PP(0)), &tenant);
	else if (tenancy_apikey_binding() == NULL ||
			 !tenancy_tenant_try_resolve(text_to_cstring(PG_GETARG_TEXT_PP(0)), &tenant) ||
			 !bound_admin_of(&tenant.id))
		raise_not_allowed();

	new_key_datums(key, &values[5], &values[6]);
	values[0] = UUIDPGetDatum(&tenant.id);
	for (i = 1; i <= 4; i++)
	{
		if (PG_ARGISNULL(i))
		{
			nulls[i] = 'n';
			values[i] = (Datum) 0;
		}
		else
			values[i] = PG_GETARG_DATUM(i);
	}
	(void) spi_as_owner("SELECT tenancy._api_key_create($1, $2, $3, $4, $5, $6, $7)",
						7, argtypes, values, nulls, SPI_OK_SELECT, &isnull);
	PG_RETURN_TEXT_P(key_result(key));
}

/* SQL: tenancy.revoke_api_key(key_id uuid). */
Datum
tenancy_revoke_api_key(PG_FUNCTION_ARGS)
{
	KeyRow		row;
	Oid			argtypes[1] = {UUIDOID};
	Datum		values[1];
	bool		isnull;

	require_shmem();
	managed_key(fcinfo, &row);
	values[0] = UUIDPGetDatum(&row.id);
	(void) spi_as_owner("SELECT tenancy._api_key_revoke($1)",
						1, argtypes, values, NULL, SPI_OK_SELECT, &isnull);
	binding_valid = false;
	PG_RETURN_VOID();
}

/*
 * SQL: tenancy.rotate_api_key(key_id uuid, grace interval DEFAULT '0')
 * RETURNS text: a new key with the same name and grants; the old one
 * expires after grace.
 */
Datum
tenancy_rotate_api_key(PG_FUNCTION_ARGS)
{
	KeyRow		row;
	char		key[KEY_LEN + 1];
	Oid			argtypes[4] = {UUIDOID, INTERVALOID, TEXTOID, BYTEAOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	bool		isnull;

	require_shmem();
	managed_key(fcinfo, &row);
	values[0] = UUIDPGetDatum(&row.id);
	if (PG_ARGISNULL(1))
	{
		nulls[1] = 'n';
		values[1] = (Datum) 0;
	}
	else
		values[1] = PG_GETARG_DATUM(1);
	new_key_datums(key, &values[2], &values[3]);
	(void) spi_as_owner("SELECT tenancy._api_key_rotate($1, $2, $3, $4)",
						4, argtypes, values, nulls, SPI_OK_SELECT, &isnull);
	binding_valid = false;
	PG_RETURN_TEXT_P(key_result(key));
}

/*
 * SQL: tenancy._keys_visible_tenant() RETURNS uuid, for the row level
 * security policy of tenancy.api_keys: the tenant whose keys this session
 * may list (bound by an admin key: its tenant; not bound but allowed to act
 * for any tenant: the context's), else NULL.  A bound session whose key
 * is no longer valid gets the binding's error.
 */
Datum
tenancy_keys_visible_tenant(PG_FUNCTION_ARGS)
{
	pg_uuid_t	tenant;
	pg_uuid_t  *result;

	if (tenancy_context_binding(&tenant, NULL))
	{
		const TenancyKeyBinding *b = tenancy_apikey_binding();

		if (b == NULL || (b->permissions & TENANCY_KEY_ADMIN) == 0)
			PG_RETURN_NULL();
	}
	else if (!tenancy_context_claimed(&tenant) ||
			 !tenancy_context_role_may_set_any(GetSessionUserId()))
		PG_RETURN_NULL();
	result = palloc(sizeof(pg_uuid_t));
	memcpy(result, &tenant, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(result);
}

/*
 * SQL: tenancy._auth_failures() RETURNS TABLE(cause text, failures bigint):
 * failed verifications in this database since the server started, by
 * cause.
 */
Datum
tenancy_auth_failures(PG_FUNCTION_ARGS)
{
	FuncCallContext *funcctx;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext oldcxt;
		TupleDesc	tupdesc;

		require_shmem();
		funcctx = SRF_FIRSTCALL_INIT();
		oldcxt = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "tenancy: return type must be a row type");
		funcctx->tuple_desc = BlessTupleDesc(tupdesc);
		funcctx->max_calls = KEY_NCAUSES;
		MemoryContextSwitchTo(oldcxt);
	}
	funcctx = SRF_PERCALL_SETUP();
	if (funcctx->call_cntr < funcctx->max_calls)
	{
		int			i = (int) funcctx->call_cntr;
		Datum		values[2];
		bool		nulls[2] = {false, false};
		char		counter[64];

		snprintf(counter, sizeof(counter), "auth_failures:%s", verdict_names[i]);
		values[0] = CStringGetTextDatum(verdict_names[i]);
		values[1] = Int64GetDatum(tenancy_usage_counter(counter));
		SRF_RETURN_NEXT(funcctx, HeapTupleGetDatum(heap_form_tuple(funcctx->tuple_desc, values, nulls)));
	}
	SRF_RETURN_DONE(funcctx);
}

/* ---------------------------------------------------------------------
 * Transaction end, log redaction, init
 * ---------------------------------------------------------------------
 */

static void
apikey_xact_callback(XactEvent event, void *arg)
{
	binding_valid = false;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			key_uses_write();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
			key_uses_end(false);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			key_uses_end(true);
			break;
		default:
			break;
	}
}

static void
apikey_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		binding_valid = false;
}

/*
 * Copy s with every key-shaped run ("tk_" followed by at least
 * REDACT_MIN_RUN base62 characters) cut to its display prefix.  Returns
 * NULL when there is nothing to redact.
 */
static char *
redact_keys(const char *s)
{
	const char *p;
	StringInfoData buf;
	bool		changed = false;

	if (s == NULL || strstr(s, KEY_MARK) == NULL)
		return NULL;
	initStringInfo(&buf);
	p = s;
	while (*p)
	{
		if (strncmp(p, KEY_MARK, KEY_MARK_LEN) == 0)
		{
			const char *q = p + KEY_MARK_LEN;

			while (is_base62(*q))
				q++;
			if (q - p - KEY_MARK_LEN >= REDACT_MIN_RUN)
			{
				appendBinaryStringInfo(&buf, p, KEY_PREFIX_LEN);
				appendStringInfoString(&buf, "...(redacted)");
				p = q;
				changed = true;
				continue;
			}
		}
		appendStringInfoChar(&buf, *p++);
	}
	if (!changed)
	{
		pfree(buf.data);
		return NULL;
	}
	return buf.data;
}

static bool
holds_key(const char *s)
{
	char	   *r = redact_keys(s);

	if (r == NULL)
		return false;
	pfree(r);
	return true;
}

/*
 * emit_log_hook: no API key reaches the server log.  Key-shaped strings in
 * the message, its detail and context are cut to their display prefix
 * (this covers log_statement's "statement: ..." lines and bind parameters),
 * and a statement that holds one is not logged as a STATEMENT line.
 */
static void
tenancy_emit_log(ErrorData *edata)
{
	char	   *r;

	if (edata->output_to_server)
	{
		if ((r = redact_keys(edata->message)) != NULL)
			edata->message = r;
		if ((r = redact_keys(edata->detail)) != NULL)
			edata->detail = r;
		if ((r = redact_keys(edata->detail_log)) != NULL)
			edata->detail_log = r;
		if ((r = redact_keys(edata->context)) != NULL)
			edata->context = r;
		if ((r = redact_keys(edata->internalquery)) != NULL)
			edata->internalquery = r;
		if (!edata->hide_stmt && debug_query_string != NULL &&
			holds_key(debug_query_string))
			edata->hide_stmt = true;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/* Called from _PG_init. */
void
tenancy_apikey_init(void)
{
	RegisterXactCallback(apikey_xact_callback, NULL);
	RegisterSubXactCallback(apikey_subxact_callback, NULL);
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = tenancy_emit_log;
	tenancy_keyperm_init();
}
