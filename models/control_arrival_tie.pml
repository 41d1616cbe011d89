/* Negative control, must FAIL: equal versions broken by arrival order (the later arrival
 * wins) instead of by source and digest.  A host that acknowledged tags' tombstone at v2
 * lets fabric's tombstone at v2 (lower in the order) overwrite it, and two hosts that saw
 * the tie in different orders would keep different registers. */
#define ARRIVAL_TIE
#include "replication.pml"
