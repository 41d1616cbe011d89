/* Negative control, must FAIL: a tombstone's digest is that of a fixed marker, between the
 * two values' digests (the rule until session 5). A host that resyncs before P is
 * republished at 6 with the value whose digest orders below the marker keeps its tombstone,
 * where the stream (and a host that resynced after the publish) shows the value. */
#define MARKER_TIE
#include "resync.pml"
