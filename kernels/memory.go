package kernels

// MemoryReporter is implemented by backends that can say how much device
// memory they hold (optional: callers check with a type assertion).
type MemoryReporter interface {
	// DeviceMemory returns the bytes of device memory in use now and the
	// most in use at any time since the backend was created.
	DeviceMemory() (inUse, peak int64)
}
