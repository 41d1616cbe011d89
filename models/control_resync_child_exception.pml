/* Negative control, must FAIL: a child's tombstone removes its path under a parent value
 * of its version, whatever the order says (the exception session 5 considered to keep a
 * same-version child tombstone deleting). The resync tombstones C at 6 and P is
 * republished at 6: the host removes the field at C's path that the stream shows. */
#define CHILD_EXCEPTION
#include "resync.pml"
