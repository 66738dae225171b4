// The parts of the iommufd backend that need no iommufd: the errors a host without it (or a
// wrong descriptor) gives. The real ioctls run in the QEMU guest's 6.12 kernel (tests/vm).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>

#include "engine/dma/iommufd_backend.h"
#include "tests/testing/expect.h"

namespace coiommu::dma {
namespace {

TEST(IommufdBackendErrors, OpenDeviceWithoutDevIommuFailsWithEnoentNamingIt) {
    const auto r = IommufdBackend::open_device("/dev/vfio/devices/vfio0", "/nonexistent/iommu");
    EXPECT_ERR(r, ENOENT);
    EXPECT_NE(r.error().context.find("/nonexistent/iommu"), std::string::npos) << r.error().context;
}

TEST(IommufdBackendErrors, OpenDeviceOnANonVfioDeviceFailsAtTheBind) {
    // /dev/null stands in for both: the first iommufd-specific ioctl is the bind, on the device.
    const auto r = IommufdBackend::open_device("/dev/null", "/dev/null");
    EXPECT_ERR(r, ENOTTY);
    EXPECT_NE(r.error().context.find("VFIO_DEVICE_BIND_IOMMUFD"), std::string::npos) << r.error().context;
}

TEST(IommufdBackendErrors, AdoptOfAnInvalidFdFailsWithEbadf) {
    EXPECT_ERR(IommufdBackend::adopt(UniqueFd{}, 1), EBADF);
}

TEST(IommufdBackendErrors, AdoptOfANonIommufdFdFailsWithTheIoctlErrno) {
    UniqueFd efd(::eventfd(0, EFD_CLOEXEC));
    ASSERT_TRUE(efd.valid());
    EXPECT_ERR(IommufdBackend::adopt(std::move(efd), 1), ENOTTY);
}

}  // namespace
}  // namespace coiommu::dma
