#pragma once
// Named tensors: a checkpoint's contents, an optimizer's state_dict.
#include <ATen/ATen.h>

#include <map>
#include <string>

namespace linearnexus {

using TensorMap = std::map<std::string, at::Tensor>;

}  // namespace linearnexus
