/* Negative control, must FAIL: the resync's tombstones carry no seq (which ranks before
 * any). A tombstone published at 6 ties with the resync's in the order; the host that
 * resynced first keeps its own, the other host the published one: their registers differ
 * in seq (documents agree). */
#define NO_RESYNC_SEQ
#include "resync.pml"
