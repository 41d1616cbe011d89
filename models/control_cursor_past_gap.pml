/* Negative control, must FAIL: the checkpoint records the newest seq received rather than
 * the end of the contiguous prefix.  When seq 2 arrives before seq 1 (reordered, and seq 1
 * lost), the cursor skips seq 1 and the catch-up never redelivers it. */
#define CURSOR_PAST_GAP
#include "replication.pml"
