#include "receive_areas.h"

#include <cstddef>

namespace kvtier {

void ReceiveAreas::Provide(const Area& a) {
  std::lock_guard<std::mutex> lock(mu_);
  areas_.push_back(a);
}

bool ReceiveAreas::Take(uint64_t len, Area* out) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < areas_.size(); ++i) {
    if (areas_[i].len >= len) {
      *out = areas_[i];
      areas_[i] = areas_.back();
      areas_.pop_back();
      return true;
    }
  }
  return false;
}

void ReceiveAreas::Return(const Area& a) { Provide(a); }

bool ReceiveAreas::Land(const Area& a, uint8_t type) {
  std::lock_guard<std::mutex> lock(mu_);
  if ((landingLen_ != 0 && a.len != landingLen_) || (landingType_ != 0 && type != landingType_)) {
    return false;
  }
  landingLen_ = a.len;
  landingType_ = type;
  landing_.push_back(a);
  return true;
}

std::vector<Area> ReceiveAreas::Unland() {
  std::vector<Area> taken;
  std::lock_guard<std::mutex> lock(mu_);
  taken.swap(landing_);
  return taken;
}

bool ReceiveAreas::TakeLanding(uint8_t type, uint64_t len, std::vector<Area>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (type != landingType_ || landingLen_ == 0 || len == 0 || len % landingLen_ != 0) return false;
  uint64_t count = len / landingLen_;
  if (count > landing_.size()) return false;
  out->assign(landing_.end() - static_cast<std::ptrdiff_t>(count), landing_.end());
  landing_.resize(landing_.size() - count);
  taken_.fetch_add(count, std::memory_order_relaxed);
  return true;
}

void ReceiveAreas::ReturnLanding(std::vector<Area>* pieces) {
  std::lock_guard<std::mutex> lock(mu_);
  returned_.fetch_add(pieces->size(), std::memory_order_relaxed);
  landing_.insert(landing_.end(), pieces->begin(), pieces->end());
  pieces->clear();
}

}  // namespace kvtier
