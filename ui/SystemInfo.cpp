// The versions the workbench runs with. libtorch's version and the CUDA device come from core and
// kernels/, never from libtorch headers here.
#include "ui/SystemInfo.h"

#include <QtGlobal>

#include "core/calib/calibration.h"
#include "core/util/version.h"
#include "kernels/hadamard.h"

QString system_info_text() {
  return QString("ReSpin Workbench %1\nQt %2\nlibtorch %3\nCUDA device: %4")
      .arg(RESPIN_VERSION_STRING)
      .arg(qVersion())
      .arg(respin::libtorch_version())
      .arg(respin::kernels::cuda_available() ? QString::fromStdString(respin::kernels::cuda_device_description())
                                             : QString("none (computing on the CPU)"));
}

QString system_info_html() {
  QString t = system_info_text().toHtmlEscaped();
  t.replace("\n", "<br>");
  return "<p><b>Rotation-based post-training quantization for LLaMA-family models</b></p><p>" + t + "</p>";
}
