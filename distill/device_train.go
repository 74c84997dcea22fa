package distill

import (
	"fmt"

	"github.com/matsurgery/matsurgery/backends"
	"github.com/matsurgery/matsurgery/model"
)

// loadDevice sets a training run up on a device: the backend (the given
// one, or Device's), the teacher on it in the run's precision, and the
// DeviceStudent, which shares the teacher's frozen weights when it can.
func (t *trainer) loadDevice() error {
	o := &t.opts
	be := o.Backend
	if be == nil {
		var err error
		if be, _, err = backends.Open(o.Device); err != nil {
			return fmt.Errorf("distill: %w", err)
		}
		t.ownBE = be
	}
	if o.needsTeacher() {
		mo := model.Options{}
		if o.Precision == PrecisionBF16 {
			mo.Precision = model.PrecisionBF16
		}
		var err error
		if t.teacher, err = model.Load(o.Teacher, be, mo); err != nil {
			return fmt.Errorf("distill: teacher: %w", err)
		}
		t.tbe = be
	}
	var err error
	t.dev, err = LoadDeviceStudent(o.Student, be, t.teacher, DeviceOptions{Precision: o.Precision, Recompute: o.Recompute,
		FreezeConnector: o.FreezeConnector, Dropout: o.Dropout})
	return err
}
