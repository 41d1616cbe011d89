/* Negative control, must FAIL: the merge orders by (version, digest) and forgets the
 * source.  Two tombstones at the same version have the same digest, so whichever arrives
 * first stays: a host keeps fabric's tombstone where the order says tags' wins. */
#define NO_SOURCE_TIE
#include "replication.pml"
