#include "ibverbs.h"

#include <endian.h>
#include <sys/stat.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <utility>

#include "dl_handle.h"

namespace kvtier::shim {

namespace {

// The few libibverbs entry points the probe needs, declared from the rdma-core man pages so the
// addon builds without infiniband/verbs.h. struct ibv_device stays opaque: its layout is ABI that
// kvtier has no reason to depend on when sysfs says the same thing.
struct IbvDevice;
using IbvGetDeviceListFn = IbvDevice** (*)(int* numDevices);
using IbvFreeDeviceListFn = void (*)(IbvDevice** list);
using IbvGetDeviceNameFn = const char* (*)(IbvDevice* device);
using IbvGetDeviceGuidFn = uint64_t (*)(IbvDevice* device);  // __be64: network byte order

// sysfs node_type reads like "1: CA"; the number is the kernel's RDMA node type. verbs derives the
// transport from it the same way (CA, switch and router speak InfiniBand transport, which is also
// what RoCE devices report).
std::string TransportFromSysfs(const std::string& device) {
  std::ifstream in("/sys/class/infiniband/" + device + "/node_type");
  std::string line;
  if (!in || !std::getline(in, line)) return "unknown";
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ' || line.back() == '\r')) {
    line.pop_back();
  }
  char* end = nullptr;
  long type = std::strtol(line.c_str(), &end, 10);
  if (end == line.c_str()) return line.empty() ? "unknown" : line;
  switch (type) {
    case 1:  // CA
    case 2:  // switch
    case 3:  // router
      return "InfiniBand";
    case 4:
      return "iWARP";
    case 5:
      return "usNIC";
    case 6:
      return "usNIC UDP";
    default:
      return line;  // unspecified or newer than this code: show what the kernel said
  }
}

}  // namespace

Verbs& Verbs::instance() {
  // Leaked on purpose, like Cuda: transports may still use it from their own threads at exit.
  static Verbs* verbs = new Verbs();
  return *verbs;
}

Verbs::Verbs() {
  try {
    detail::DlHandle lib;
    if (!lib.open("libibverbs.so.1", &status_.reason)) return;
    status_.path = lib.realPath();
    status_.version = detail::SonameSuffix(status_.path);

    IbvGetDeviceListFn getDeviceList = nullptr;
    IbvFreeDeviceListFn freeDeviceList = nullptr;
    IbvGetDeviceNameFn getDeviceName = nullptr;
    IbvGetDeviceGuidFn getDeviceGuid = nullptr;
    if (!lib.sym("ibv_get_device_list", &getDeviceList, &status_.reason) ||
        !lib.sym("ibv_free_device_list", &freeDeviceList, &status_.reason) ||
        !lib.sym("ibv_get_device_name", &getDeviceName, &status_.reason) ||
        !lib.sym("ibv_get_device_guid", &getDeviceGuid, &status_.reason)) {
      return;
    }
    // The data path's entry points; a library missing one still lists devices for `kvtier info`.
    ibv::Api& a = api_;
    apiLoaded_ = lib.sym("ibv_get_device_list", &a.getDeviceList, &apiReason_) &&
                 lib.sym("ibv_free_device_list", &a.freeDeviceList, &apiReason_) &&
                 lib.sym("ibv_get_device_name", &a.getDeviceName, &apiReason_) &&
                 lib.sym("ibv_open_device", &a.openDevice, &apiReason_) &&
                 lib.sym("ibv_close_device", &a.closeDevice, &apiReason_) &&
                 lib.sym("ibv_query_port", &a.queryPort, &apiReason_) &&
                 lib.sym("ibv_query_gid", &a.queryGid, &apiReason_) &&
                 lib.sym("ibv_alloc_pd", &a.allocPd, &apiReason_) &&
                 lib.sym("ibv_dealloc_pd", &a.deallocPd, &apiReason_) &&
                 lib.sym("ibv_reg_mr", &a.regMr, &apiReason_) &&
                 lib.sym("ibv_dereg_mr", &a.deregMr, &apiReason_) &&
                 lib.sym("ibv_create_cq", &a.createCq, &apiReason_) &&
                 lib.sym("ibv_destroy_cq", &a.destroyCq, &apiReason_) &&
                 lib.sym("ibv_create_qp", &a.createQp, &apiReason_) &&
                 lib.sym("ibv_destroy_qp", &a.destroyQp, &apiReason_) &&
                 lib.sym("ibv_modify_qp", &a.modifyQp, &apiReason_);
    // Kept from here on: listing devices loads provider plugins (libmlx5 ...) that libibverbs
    // keeps global state for, so unloading it afterwards is not safe.
    lib_ = lib.release();
    status_.loaded = true;

    int count = 0;
    errno = 0;
    IbvDevice** list = getDeviceList(&count);
    if (list == nullptr) {
      int err = errno;
      devicesReason_ = std::string("ibv_get_device_list failed: ") +
                       (err != 0 ? std::strerror(err) : "no error code given");
      // ENOSYS alone reads like a libibverbs bug; the usual cause is a kernel without the RDMA
      // stack, which is what containers and cloud VMs without a NIC look like.
      struct stat st;
      if (err == ENOSYS && stat("/sys/class/infiniband_verbs", &st) != 0) {
        devicesReason_ +=
            " (no /sys/class/infiniband_verbs: the kernel RDMA verbs stack is not loaded)";
      }
      return;
    }
    std::unique_ptr<IbvDevice*, IbvFreeDeviceListFn> freeList(list, freeDeviceList);
    for (int i = 0; i < count && list[i] != nullptr; ++i) {
      VerbsDevice dev;
      const char* name = getDeviceName(list[i]);
      dev.name = name != nullptr ? name : "";
      // verbs returns 0 when it cannot read the GUID; "may be empty" beats a fake all-zero GUID.
      uint64_t guid = be64toh(getDeviceGuid(list[i]));
      if (guid != 0) {
        char hex[17];
        std::snprintf(hex, sizeof(hex), "%016" PRIx64, guid);
        dev.guid = hex;
      }
      dev.transport = dev.name.empty() ? "unknown" : TransportFromSysfs(dev.name);
      devices_.push_back(std::move(dev));
    }
    if (devices_.empty()) {
      devicesReason_ = "no RDMA devices found (ibv_get_device_list returned 0)";
    }
  } catch (const std::exception& e) {
    status_.loaded = false;
    status_.reason = std::string("probing libibverbs failed: ") + e.what();
  }
}

}  // namespace kvtier::shim
