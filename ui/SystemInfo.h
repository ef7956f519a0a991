// Versions and devices for Help > About and `respin-workbench --version`-style reports.
#pragma once

#include <QString>

QString system_info_html();  // ReSpin, Qt, libtorch, CUDA device (or "none")
QString system_info_text();
