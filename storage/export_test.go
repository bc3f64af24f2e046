package storage

// KeySlot exposes the Cluster slot function to the tests of storage_test.
var KeySlot = keySlot
