/* Negative control, must FAIL: dropping a tombstone leaves no floor.  A late copy of a
 * write the dropped tombstone had overridden (e0 after e8 and e1 are gone) counts as new
 * and the deleted data comes back. */
#define NO_FLOOR
#include "compaction.pml"
