/* Negative control, must FAIL: one numeric horizon for every version space.  A hybrid-
 * clock horizon (about 1e17 in the code, 11..13 here) is past every counter version, so
 * K's tombstone at v2 goes while K's write of another key at v1 is still on its way; the
 * floor it leaves then refuses that write, and the documents differ from the spec's. */
#define ONE_HORIZON
#include "compaction.pml"
