/* Negative control, must FAIL: compaction drops a tombstone below its horizon even when it
 * hides part of an older live value (e1, the field of P's value at C's path) or an older
 * live register beneath it (e3 over D): the document shows deleted data again. */
#define DROP_HIDING
#include "compaction.pml"
